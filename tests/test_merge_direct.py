"""A Keras soup without ``into`` or an eval function is committed from the stored structure:
no model is rebuilt, and the version id is the one committing a rebuilt model would give."""

from __future__ import annotations

import pytest
from keras_models import committed_trained, conv_bn_model, dense_model

from mvc_magics.adapters import adapter_named
from mvc_magics.operations import versions


@pytest.fixture
def build_calls(monkeypatch):
    """Counts the Keras adapter's rebuilds (the real build still runs)."""
    adapter_type = type(adapter_named("keras"))
    real_build = adapter_type.build
    calls = []

    def counting_build(self, *args, **kwargs):
        calls.append(args)
        return real_build(self, *args, **kwargs)

    monkeypatch.setattr(adapter_type, "build", counting_build)
    return calls


@pytest.mark.parametrize("factory, kind", [(dense_model, "dense"), (conv_bn_model, "conv_bn")])
def test_soup_is_committed_without_a_rebuild_and_with_the_rebuilt_models_id(repo, build_calls, factory, kind):
    inputs = committed_trained(repo, factory, kind)
    merged = repo.merge([v.id for v in inputs], weights=[0.5, 0.3, 0.2])
    assert build_calls == []  # nothing rebuilt to commit the soup
    assert merged.parents == tuple(v.id for v in inputs)
    assert merged.framework == inputs[0].framework
    assert merged.extra["compile"] == inputs[0].extra["compile"]
    assert merged.extra["merge"]["weights"] == pytest.approx([0.5, 0.3, 0.2])
    assert repo.head("net").id == inputs[-1].id  # no ``into``: HEAD stays
    # Today's path: the averaged weights in a model rebuilt from the stored structure, committed.
    adapter = adapter_named(inputs[0].framework)
    rebuilt = adapter.build(versions.structure(repo.store, inputs[0].id), repo.load_state(merged))
    again = repo.commit(rebuilt, "net")
    assert again.id == merged.id
    assert not again.stats.new_version


def test_an_eval_function_or_into_still_gets_a_live_model(repo, build_calls):
    models = [dense_model(seed) for seed in range(2)]
    inputs = [repo.commit(m, "net") for m in models]
    seen = []
    merged = repo.merge([v.id for v in inputs], eval_fn=lambda m: seen.append(m) or 1.0, score_name="acc")
    assert len(build_calls) == 1 and seen and merged.metrics == {"acc": 1.0}
    live = dense_model(5)
    into = repo.merge([v.id for v in inputs], weights=[0.7, 0.3], into=live)
    assert repo.head("net").id == into.id
    assert repo.load_state(into).keys() == repo.load_state(merged).keys()
