"""Issue 23 §1: a teammate with write access stores a version naming hostile code or crafted native
data; rebuilding it must refuse in one line, run nothing, crash nothing, and change nothing.

Each attack is made the way a teammate would: a legitimate model is committed through the real API
by a process whose adapter was edited to store the hostile structure or arrays (the store takes
whatever a commit gives it); the victim then checks the version out with the ordinary API or magic.
Attacks that would kill the process run the victim's side in a child process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import store_state
from IPython.core.error import UsageError

from mvc_magics.errors import UnsupportedModelError


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, message
    return message


def _commit_poisoned(repo, adapter_cls, method, poison, model, name):
    """Commit ``model`` with ``adapter_cls.method``'s output passed through ``poison`` (the attacker's edit)."""
    original = getattr(adapter_cls, method)

    def poisoned(self, *args, **kwargs):
        return poison(original(self, *args, **kwargs))

    setattr(adapter_cls, method, poisoned)
    try:
        return repo.commit(model, name)
    finally:
        setattr(adapter_cls, method, original)


def _victims_in_child(store, checkouts):
    """Check each ``(version id, model name, use)`` out in one child process; when a rebuild is not
    refused, run ``use`` (the call that would crash) on it. Returns (exit code, one output line each)."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from mvc_magics import Repo
        from mvc_magics.errors import MVCError
        repo = Repo({str(store)!r})
        for vid, name, use in {checkouts!r}:
            try:
                model = repo.checkout(vid, name=name)
            except MVCError as exc:
                print("REFUSED", type(exc).__name__, str(exc).replace(chr(10), "<newline>"), flush=True)
                continue
            print("REBUILT", name, flush=True)
            exec(use)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout.splitlines()


def _assert_all_refused(code, lines, count):
    assert code == 0, f"the victim's process died (exit {code}) after: {lines}"
    assert len(lines) == count and all(line.startswith("REFUSED UnsupportedModelError") for line in lines), lines
    assert not any("<newline>" in line for line in lines), lines


# -- PyTorch: a class path that only starts like torch.nn --------------------------------------------

def test_torch_class_path_through_module_attributes_never_runs(repo, tmp_path, ip):
    import torch

    from mvc_magics.adapters.torch import TorchAdapter

    marker = tmp_path / "popen-ran"
    net = torch.nn.Linear(3, 2)
    legit = repo.commit(net, "net")
    hostile_paths = ["torch.nn.functional.np.f2py.subprocess.Popen", "torch.nn.modules.module.subprocess.Popen",
                     "torch.nn.functional.torch.os.system", "subprocess.Popen"]
    live = {k: v.clone() for k, v in net.state_dict().items()}
    for path in hostile_paths:
        module = {"class": path, "args": {"args": ["touch", str(marker)]}}
        poisoned = _commit_poisoned(repo, TorchAdapter, "structure", lambda s, m=module: {**s, "module": m}, net, "net")
        assert poisoned.id != legit.id
        before = store_state(repo.path)
        with pytest.raises(UnsupportedModelError) as refused:
            repo.checkout(poisoned.id, name="net")
        assert "runs that class's code" in _one_line(refused.value)
        assert not marker.exists()
        assert store_state(repo.path) == before
        assert all(torch.equal(net.state_dict()[k], v) for k, v in live.items())
    # Through the magic, in a real shell: the same one-line refusal.
    ip.user_ns["net"] = net
    ip.run_line_magic("mvc_init", str(repo.path))
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("mvc_checkout", f"{poisoned.id} --model net --as copy")
    _one_line(refused.value)
    assert "copy" not in ip.user_ns and not marker.exists()
    # The legitimate version still rebuilds, with its weights.
    rebuilt = repo.checkout(legit.id, name="net")
    assert type(rebuilt) is torch.nn.Linear and torch.equal(rebuilt.weight, net.weight)


def test_torch_arguments_are_data_bound_to_the_constructor(repo):
    import torch

    from mvc_magics.adapters.torch import TorchAdapter

    net = torch.nn.Linear(3, 2)
    for args, says in (({"in_features": 3, "out_features": 2, "evil": 1}, "arguments"),
                       ({"in_features": 3}, "arguments"), (["in_features"], "arguments"),
                       ({"in_features": 3, "out_features": 2, "device": {"type": "cpu"}}, "cannot rebuild"),
                       # 4 TB of weights: measured on the meta device, refused before any allocation
                       ({"in_features": 10**6, "out_features": 10**6}, "does not fit the stored tensors")):
        module = {"class": "torch.nn.modules.linear.Linear", "args": args}
        version = _commit_poisoned(repo, TorchAdapter, "structure", lambda s, m=module: {**s, "module": m}, net, "net")
        with pytest.raises(UnsupportedModelError) as refused:
            repo.checkout(version.id, name="net")
        assert says in _one_line(refused.value)


# -- scikit-learn: functions trusted by prefix, trees with wild indices ------------------------------

def _pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = np.linspace(0, 1, 40).reshape(20, 2)
    return make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()).fit(X, np.arange(20) % 2)


def _rename_function(old, module, function):
    def poison(taken):
        structure, tensors = taken
        text = json.dumps(structure).replace(f'"__class__": "{old}", "__module__": "numpy"',
                                             f'"__class__": "{function}", "__module__": "{module}"')
        assert text != json.dumps(structure)
        return json.loads(text), tensors
    return poison


@pytest.mark.parametrize("module, function", [("sklearn.utils._testing", "check_output"),
                                              ("sklearn.utils._testing", "os"), ("subprocess", "check_output")])
def test_sklearn_function_named_by_prefix_is_refused(repo, tmp_path, module, function):
    from mvc_magics.adapters.sklearn import SklearnAdapter

    pipe = _pipeline()
    expected = pipe.predict_proba(np.ones((2, 2)))
    version = _commit_poisoned(repo, SklearnAdapter, "take_apart", _rename_function("log1p", module, function),
                               pipe, "pipe")
    before = store_state(repo.path)
    with pytest.raises(UnsupportedModelError) as refused:
        rebuilt = repo.checkout(version.id, name="pipe")
        rebuilt[0].transform(["touch", str(tmp_path / "ran")])  # what the attack waits for
    assert f"{module}.{function}" in _one_line(refused.value)
    assert not (tmp_path / "ran").exists()
    assert store_state(repo.path) == before
    np.testing.assert_array_equal(pipe.predict_proba(np.ones((2, 2))), expected)


def _set_tensor(name, change):
    def poison(taken):
        structure, tensors = taken
        tensors = dict(tensors)
        tensors[name] = change(tensors[name].copy())
        return structure, tensors
    return poison


def _poke(index, value):
    def change(array):
        array[index] = value
        return array
    return change


def _iris_tree():
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_iris(return_X_y=True)
    return DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, y), X


TREE_ATTACKS = {
    "child index 1e9": ("tree_/nodes/left_child", _poke(0, 10**9)),
    "feature index 1e9": ("tree_/nodes/feature", _poke(0, 10**9)),
    "negative child": ("tree_/nodes/right_child", _poke(0, -7)),
    "cycle back to the root": ("tree_/nodes/left_child", _poke(2, 0)),
    "a tree wider than its estimator": ("tree_/nodes/feature", lambda a: np.where(a >= 0, 10**9 - 1, a)),
}


def _wider_tree(poison):
    """Also make the Tree itself claim 10**9 features (its first constructor argument)."""
    def wider(taken):
        # a fresh __id__ too: skops would otherwise reuse the first node stored with the old one
        text = re.sub(r'("args": \{[^}]*"content": \[\{[^}]*"content": ")4", "is_json": true, "__id__": \d+',
                      r'\g<1>1000000000", "is_json": true, "__id__": 987654', json.dumps(taken[0]))
        assert text != json.dumps(taken[0])
        return poison((json.loads(text), taken[1]))
    return wider


def test_decision_trees_with_wild_indices_are_refused_and_never_crash(repo):
    from mvc_magics.adapters.sklearn import SklearnAdapter

    model, X = _iris_tree()
    expected = model.predict(X)
    checkouts = []
    for attack, (tensor, change) in sorted(TREE_ATTACKS.items()):
        poison = _set_tensor(tensor, change)
        if attack == "a tree wider than its estimator":
            poison = _wider_tree(poison)
        version = _commit_poisoned(repo, SklearnAdapter, "take_apart", poison, model, "tree")
        checkouts.append((version.id, "tree", "model.predict(np.ones((3, 4))); model.apply(np.ones((3, 4)))"))
    before = store_state(repo.path)
    _assert_all_refused(*_victims_in_child(repo.path, checkouts), len(TREE_ATTACKS))
    assert store_state(repo.path) == before
    np.testing.assert_array_equal(model.predict(X), expected)


def test_gradient_boosting_stage_wider_than_the_model_is_refused(repo):
    from sklearn.datasets import load_iris
    from sklearn.ensemble import GradientBoostingClassifier

    from mvc_magics.adapters.sklearn import SklearnAdapter

    X, y = load_iris(return_X_y=True)
    model = GradientBoostingClassifier(n_estimators=2, max_depth=2, random_state=0).fit(X, y)

    def poison(taken):  # stage 1's first tree claims 10**9 features, consistently inside itself
        structure, tensors = taken
        structure, tensors = json.loads(json.dumps(structure)), dict(tensors)
        stages = structure["schema"]["content"]["content"]["estimators_"]["content"]
        stage = stages[1]["content"][0]["content"]["content"]
        wide = {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": "1000000000",
                "is_json": True}
        stage["n_features_in_"] = {**wide, "__id__": 987650}  # fresh ids: skops reuses a node per id
        stage["tree_"]["__reduce__"]["args"]["content"][0] = {**wide, "__id__": 987651}
        name = "estimators_/1/0/tree_/nodes/feature"
        tensors[name] = np.where(tensors[name] >= 0, 10**9 - 1, tensors[name])
        return structure, tensors

    version = _commit_poisoned(repo, SklearnAdapter, "take_apart", poison, model, "gb")
    _assert_all_refused(*_victims_in_child(repo.path, [(version.id, "gb", "model.predict(np.ones((3, 4)))")]), 1)


def test_tree_models_users_train_still_rebuild_without_unsafe(repo):
    from sklearn.datasets import load_iris
    from sklearn.ensemble import (
        AdaBoostClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        IsolationForest,
        RandomForestClassifier,
    )

    X, y = load_iris(return_X_y=True)
    for name, model in {"rf": RandomForestClassifier(5, random_state=0).fit(X, y),
                        "gbc": GradientBoostingClassifier(n_estimators=3, random_state=0).fit(X, y),
                        "gbr": GradientBoostingRegressor(n_estimators=3, random_state=0).fit(X, y.astype(float)),
                        "et": ExtraTreesRegressor(3, random_state=0).fit(X, y.astype(float)),
                        "ada": AdaBoostClassifier(n_estimators=3, random_state=0).fit(X, y),
                        "iso": IsolationForest(n_estimators=3, max_features=0.5, random_state=0).fit(X)}.items():
        version = repo.commit(model, name)
        rebuilt = repo.checkout(version.id, name=name)
        method = "score_samples" if name == "iso" else "predict"
        np.testing.assert_array_equal(getattr(rebuilt, method)(X), getattr(model, method)(X))


def test_types_skops_does_not_trust_need_an_opt_in(repo):
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.ensemble import HistGradientBoostingClassifier

    # Categorical features make HistGradientBoosting keep a functools.partial of check_array: a
    # function object, which stays off the list (HGB and KNN themselves are checked and trusted).
    X, y = load_iris(return_X_y=True, as_frame=True)
    X["kind"] = pd.Categorical(np.array(["a", "b", "c"])[np.arange(len(X)) % 3])
    model = HistGradientBoostingClassifier(max_iter=3).fit(X, y)
    version = repo.commit(model, "hgb")
    with pytest.raises(UnsupportedModelError) as refused:
        repo.checkout(version.id, name="hgb")
    assert "not on the trusted list" in _one_line(refused.value) and "functools.partial" in str(refused.value)
    np.testing.assert_array_equal(repo.checkout(version.id, name="hgb", unsafe=True).predict(X), model.predict(X))


# -- LightGBM: a text model LightGBM would abort on --------------------------------------------------

def _booster():
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    return lgb.train({"verbose": -1, "num_leaves": 4, "seed": 0}, lgb.Dataset(X, X[:, 0]), 3), X


def _edit_part(part, edit):
    def poison(state):
        state = dict(state)
        text = edit(state[part].tobytes().decode())
        state[part] = np.frombuffer(text.encode(), np.uint8)
        return state
    return poison


LIGHTGBM_ATTACKS = {
    "tree_sizes longer than the trees": ("header", lambda t: re.sub(r"tree_sizes=(\d+)",
                                                                    lambda m: f"tree_sizes={int(m.group(1)) + 40}", t)),
    "a tree line without '='": ("tree/1", lambda t: t.replace("shrinkage=", "shrinkage")),
    "a split feature past the last feature": ("tree/0", lambda t: re.sub(r"split_feature=\d+", "split_feature=999", t)),
    "arrays shorter than num_leaves": ("tree/2", lambda t: re.sub(r"num_leaves=\d+", "num_leaves=400", t)),
    "no trees per iteration": ("header", lambda t: t.replace("num_tree_per_iteration=1", "num_tree_per_iteration=0")),
}


def test_lightgbm_texts_lightgbm_would_abort_on_are_refused(repo):
    from mvc_magics.adapters.lightgbm import LightGBMAdapter

    booster, X = _booster()
    expected = booster.predict(X)
    versions = [_commit_poisoned(repo, LightGBMAdapter, "get_state", _edit_part(part, edit), booster, "gbm")
                for _attack, (part, edit) in sorted(LIGHTGBM_ATTACKS.items())]
    before = store_state(repo.path)
    checkouts = [(v.id, "gbm", "model.predict(np.ones((3, 4)))") for v in versions]
    _assert_all_refused(*_victims_in_child(repo.path, checkouts), len(LIGHTGBM_ATTACKS))
    for version in versions:  # into the live booster (safe here: refused before LightGBM parses)
        with pytest.raises(UnsupportedModelError) as refused:
            repo.checkout(version.id, booster)
        _one_line(refused.value)
    assert store_state(repo.path) == before
    np.testing.assert_array_equal(booster.predict(X), expected)


def test_tree_arrays_are_checked_before_skops_builds_anything(monkeypatch):
    import skops.io

    from mvc_magics.adapters.sklearn import SklearnAdapter

    adapter = SklearnAdapter()
    model, _X = _iris_tree()

    def never(*args, **kwargs):
        raise AssertionError("skops built objects from a stored tree that was not checked first")

    monkeypatch.setattr(skops.io, "loads", never)
    attacks = {name: _set_tensor(tensor, change) for name, (tensor, change) in TREE_ATTACKS.items()}
    attacks["a tree wider than its estimator"] = _wider_tree(attacks["a tree wider than its estimator"])

    def reused_id(taken):  # the Tree's n_features node under the id of another node with other content
        structure, tensors = json.loads(json.dumps(taken[0])), taken[1]
        args = structure["schema"]["content"]["content"]["tree_"]["__reduce__"]["args"]["content"]
        other = structure["schema"]["content"]["content"]["min_samples_split"]  # content "2"
        args[0] = {**args[0], "__id__": other["__id__"]}
        return structure, tensors

    attacks["an id reused for other content"] = reused_id
    for name, poison in attacks.items():
        structure, tensors = poison(adapter.take_apart(model))
        with pytest.raises(UnsupportedModelError) as refused:
            adapter.build(structure, tensors)
        assert "malformed" in _one_line(refused.value), name
