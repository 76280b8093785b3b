"""Fuzzing the rebuild allow-lists (issue 23 §1): stored names drawn from attribute chains reachable
from every allowed module, random constructor arguments. No case may run code (a marker file an
exploit would create never appears), kill the process (the rebuilds run in a child process whose
exit code is checked), or refuse in more than one line. LightGBM model texts, mutated at random
(numbers, lines dropped, repeated or cut, with and without ``tree_sizes`` fixed up), are either
refused in one line or loaded and used by LightGBM without killing the process.

``MVC_FUZZ_SCALE`` multiplies the number of examples (scripts/fuzz_long.py's long run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCALE = max(1, int(os.environ.get("MVC_FUZZ_SCALE", "1")))

CHILD = textwrap.dedent('''
    import builtins, json, os, sys, types
    import numpy as np
    import torch, sklearn.utils, sklearn.utils._testing, sklearn.preprocessing._function_transformer, optax
    import mvc_magics.adapters.torch_modules
    from hypothesis import HealthCheck, given, settings, strategies as st
    from mvc_magics.adapters.jax import JaxAdapter
    from mvc_magics.adapters.sklearn import SklearnAdapter
    from mvc_magics.adapters.torch import TorchAdapter
    from mvc_magics.errors import MVCError

    MARKER, EXAMPLES = sys.argv[1], int(sys.argv[2])
    ROOTS = {"torch.nn": torch.nn, "torch.nn.functional": torch.nn.functional,
             "torch.nn.modules.linear": torch.nn.modules.linear,
             "mvc_magics.adapters.torch_modules": sys.modules["mvc_magics.adapters.torch_modules"],
             "sklearn.utils": sklearn.utils, "sklearn.utils._testing": sklearn.utils._testing,
             "sklearn.preprocessing._function_transformer":
                 sys.modules["sklearn.preprocessing._function_transformer"],
             "numpy": np, "builtins": builtins, "optax": optax}

    def chains():
        """module.attr[.attr[.attr]] paths, following modules and classes, as an attacker would."""
        found = set()
        def walk(obj, path, depth):
            try:
                names = sorted(dir(obj))
            except Exception:
                return
            for attr in names:
                if attr.startswith("__"):
                    continue
                try:
                    child = getattr(obj, attr)
                except Exception:
                    continue
                name = f"{path}.{attr}"
                if callable(child) or isinstance(child, types.ModuleType):
                    found.add(name)
                if depth < 3 and (isinstance(child, types.ModuleType) or (depth < 2 and isinstance(child, type))):
                    walk(child, name, depth + 1)
        for root, module in ROOTS.items():
            walk(module, root, 1)
        return sorted(found)

    NAMES = chains()
    # The chains an exploit wants, whether or not the walk above found them.
    TARGETS = [n for n in NAMES if n.rsplit(".", 1)[-1] in {"Popen", "check_output", "run", "call", "system",
                                                              "popen", "eval", "exec", "open", "remove", "rmtree"}]
    TARGETS += ["torch.nn.functional.np.f2py.subprocess.Popen", "sklearn.utils._testing.check_output",
                "subprocess.Popen", "os.system", "builtins.exec", "posix.system", "pathlib.Path.touch"]
    print("NAMES", len(NAMES), "TARGETS", len(TARGETS), flush=True)

    COMMAND = ["touch", MARKER]
    ATTACK_ARGS = [{"args": COMMAND}, {"args": " ".join(COMMAND), "shell": True}, {"command": " ".join(COMMAND)},
                   {"file": MARKER, "mode": "w"}, {"path": MARKER}, {"source": f"open({MARKER!r}, 'w')"},
                   {"cmd": COMMAND}, {}]
    data = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False)
                        | st.text(max_size=8) | st.just(MARKER),
                        lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                        max_leaves=6)
    KEYS = ["args", "shell", "file", "mode", "in_features", "out_features", "members", "weights", "method", "func",
            "kw_args", "validate", "inplace", "p"]
    arguments = st.one_of(st.sampled_from(ATTACK_ARGS), st.dictionaries(st.sampled_from(KEYS), data, max_size=4),
                          st.dictionaries(st.text(max_size=6), data, max_size=3))
    from mvc_magics.adapters import jax as jax_module, torch as torch_module
    ALLOWED = sorted(torch_module.ALLOWED._paths()) + sorted(jax_module.ALLOWED._paths())
    names = st.one_of(st.sampled_from(NAMES), st.sampled_from(TARGETS), st.sampled_from(ALLOWED),
                      st.sampled_from(NAMES).map(lambda n: n + ".subprocess.Popen"))
    counts = {"cases": 0, "refused": 0, "built": 0}

    def attempt(build, use=None):
        counts["cases"] += 1
        try:
            model = build()
        except MVCError as exc:
            message = str(exc)
            assert message and "\\n" not in message and "\\r" not in message, repr(message)
            counts["refused"] += 1
            return
        counts["built"] += 1
        if use is not None:
            try:
                use(model)
            except Exception:
                pass  # a legitimate object used wrongly: fine, as long as nothing ran
        assert not os.path.exists(MARKER), "an exploit ran"

    def skops_function(module, function):
        return {"__class__": "FunctionTransformer", "__module__": "sklearn.preprocessing._function_transformer",
                "__loader__": "ObjectNode", "content": {"__class__": "dict", "__module__": "builtins",
                "__loader__": "DictNode", "content": {"func": {"__class__": function, "__module__": module,
                "__loader__": "FunctionNode"}}, "key_types": {"__class__": "list", "__module__": "builtins",
                "__loader__": "ListNode", "content": [{"__class__": "str", "__module__": "builtins",
                "__loader__": "JsonNode", "content": '"str"', "is_json": True}]}}}

    def skops_object(module, cls, args):
        content = {k: {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
                       "content": json.dumps(v), "is_json": True} for k, v in args.items()}
        keys = [{"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": '"str"',
                 "is_json": True}] * len(content)
        return {"__class__": cls, "__module__": module, "__loader__": "ObjectNode",
                "content": {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
                            "content": content, "key_types": {"__class__": "list", "__module__": "builtins",
                                                              "__loader__": "ListNode", "content": keys}}}

    torch_adapter, sklearn_adapter, jax_adapter = TorchAdapter(), SklearnAdapter(), JaxAdapter()
    FAST = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))

    @FAST
    @given(names, arguments, st.booleans())
    def torch_case(name, args, nested):
        node = {"class": name, "args": args}
        if nested:
            node = {"class": "torch.nn.modules.container.Sequential", "children": [["0", node]]}
        attempt(lambda: torch_adapter.build({"format": "torch.nn.Module/1", "module": node, "tied": {}}, {}),
                lambda m: m(torch.zeros(1)))

    @FAST
    @given(names, arguments, st.booleans())
    def sklearn_case(name, args, as_function):
        module, _, attr = name.rpartition(".")
        schema = skops_function(module, attr) if as_function else skops_object(module, attr, args)
        attempt(lambda: sklearn_adapter.build({"format": "sklearn.skops/1", "schema": schema}, {}),
                lambda m: m.transform(COMMAND) if hasattr(m, "transform") else m.fit(COMMAND))

    @FAST
    @given(names, arguments)
    def jax_case(name, args):
        tree = {"namedtuple": name, "fields": [[str(k), {"none": True}] for k in args]}
        attempt(lambda: jax_adapter.build({"format": "jax.pytree/1", "tree": tree}, {}))

    # Legitimate rebuilds every run (the fuzz draws one only ~1% of the time, so "built > 0" was flaky):
    # the allow-lists must not refuse everything, or the refusals above would prove nothing.
    for node in ({"class": "torch.nn.modules.linear.Linear", "args": {"in_features": 1, "out_features": 2}},
                 {"class": "torch.nn.modules.activation.ReLU", "args": {}}):
        attempt(lambda: torch_adapter.build({"format": "torch.nn.Module/1", "module": node, "tied": {}}, {}),
                lambda m: m(torch.zeros(1)))
    torch_case()
    sklearn_case()
    jax_case()
    assert not os.path.exists(MARKER), "an exploit ran"
    print("CASES", counts["cases"], "REFUSED", counts["refused"], "BUILT", counts["built"], flush=True)
''')


def test_stored_names_and_arguments_never_run_code_or_kill_the_process(tmp_path):
    marker = tmp_path / "exploit-ran"
    examples = 150 * SCALE
    done = subprocess.run([sys.executable, "-c", CHILD, str(marker), str(examples)], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout[-2000:]} {done.stderr[-3000:]}"
    assert not marker.exists()
    summary = done.stdout.strip().splitlines()[-1].split()
    assert summary[0] == "CASES" and int(summary[1]) >= 3 * examples
    assert int(summary[3]) > 0 and int(summary[5]) > 0  # refusals (each one line) and legitimate rebuilds
    names = done.stdout.splitlines()[0].split()
    assert names[0] == "NAMES" and int(names[1]) > 1000 and int(names[3]) > 10


LIGHTGBM_CHILD = textwrap.dedent('''
    import random, re, sys
    import numpy as np, lightgbm as lgb
    from mvc_magics.adapters.lightgbm_text import check_model_text
    from mvc_magics.errors import UnsupportedModelError

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    X[:, 3] = rng.integers(0, 5, 200)
    y = X[:, 0] + X[:, 3]
    def train(params, target=y, **data):
        return lgb.train({"verbose": -1, "seed": 0, **params}, lgb.Dataset(X, target, **data), 2).model_to_string()
    BASES = [train({"num_leaves": 4}), train({"num_leaves": 4, "min_data_per_group": 5, "cat_smooth": 1},
                                             categorical_feature=[3]),
             train({"num_leaves": 3, "linear_tree": True}), train({"num_leaves": 4}, np.ones(200)),
             train({"objective": "multiclass", "num_class": 3, "num_leaves": 3}, rng.integers(0, 3, 200)),
             train({"monotone_constraints": [1, 0, 0, -1], "num_leaves": 4})]
    NUMBER = re.compile(r"-?\\d+(\\.\\d+)?(e-?\\d+)?")
    VALUES = ["-1", "0", "1", "2", "3", "4", "5", "-2", "-5", "100", "1000000000", "2147483648", "-2147483649",
              "1e308", "nan", "", "x", ":", "="]

    def fix_sizes(text):
        first, end = text.find("\\nTree="), text.find("\\nend of trees\\n")
        if first < 0 or end < 0:
            return text
        blocks = [b for b in re.split(r"(?m)^(?=Tree=)", text[first + 1:end + 1]) if b]
        sizes = " ".join(str(len(b)) for b in blocks)
        return re.sub(r"(?m)^tree_sizes=.*$", "tree_sizes=" + sizes, text, count=1)

    def mutate(text, r):
        lines = text.split("\\n")
        for _ in range(r.randint(1, 3)):
            i, op = r.randrange(len(lines)), r.random()
            if op < 0.5:
                numbers = list(NUMBER.finditer(lines[i]))
                if numbers:
                    m = r.choice(numbers)
                    lines[i] = lines[i][:m.start()] + r.choice(VALUES) + lines[i][m.end():]
            elif op < 0.65:
                del lines[i]
            elif op < 0.75:
                lines.insert(i, lines[r.randrange(len(lines))])
            elif op < 0.85:
                lines[i] = lines[i] + " " + r.choice(["1", "-1", "0.5"])
            elif op < 0.92:
                lines[i] = lines[i].replace("=", "", 1).replace(":", "", 1)
            else:
                lines[i] = " ".join(lines[i].split(" ")[:-1])
        out = "\\n".join(lines)
        return fix_sizes(out) if r.random() < 0.8 else out

    r, cases = random.Random(int(sys.argv[1])), int(sys.argv[2])
    accepted = refused = 0
    probe = np.vstack([X[:5], np.full((1, 4), np.nan), np.full((1, 4), 1e9)])
    for _ in range(cases):
        text = mutate(r.choice(BASES), r)
        try:
            check_model_text(text)
        except UnsupportedModelError as exc:
            assert "\\n" not in str(exc), repr(str(exc))
            refused += 1
            continue
        accepted += 1
        try:
            lgb.Booster(model_str=text).predict(probe)
        except Exception:
            pass  # LightGBM's own error for an accepted text: the adapter turns it into one line
    print("ACCEPTED", accepted, "REFUSED", refused, flush=True)
''')


def test_lightgbm_texts_are_refused_or_parsed_without_killing_the_process(tmp_path):
    cases = 400 * SCALE
    done = subprocess.run([sys.executable, "-c", LIGHTGBM_CHILD, "23", str(cases)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout[-1000:]} {done.stderr[-2000:]}"
    summary = done.stdout.split()
    assert summary[0] == "ACCEPTED" and int(summary[1]) > 0 and int(summary[3]) > 0
    assert int(summary[1]) + int(summary[3]) == cases
