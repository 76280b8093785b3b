"""The ref grammar and name validation (no store needed)."""

from __future__ import annotations

import pytest

from mvc_magics.core.names import validate_name
from mvc_magics.core.refs import infer_direction, parse_ref
from mvc_magics.errors import InvalidNameError, UnknownRefError


@pytest.mark.parametrize(
    ("metric", "direction"),
    [("val_loss", "min"), ("loss", "min"), ("val_mse", "min"), ("rmse", "min"), ("mae", "min"),
     ("perplexity", "min"), ("error_rate", "min"), ("latency_ms", "min"), ("accuracy", "max"),
     ("val_accuracy", "max"), ("f1", "max"), ("auc", "max"), ("sparse_categorical_crossentropy", "min")],
)
def test_direction_is_inferred_from_the_metric_name(metric, direction):
    assert infer_direction(metric) == direction


def test_parse_every_ref_form():
    assert parse_ref("HEAD").kind == "head"
    assert parse_ref("HEAD~2").ancestor == 2 and parse_ref("HEAD~2").kind == "head"
    assert parse_ref("HEAD~").ancestor == 1
    assert parse_ref("latest~1").kind == "latest" and parse_ref("latest~1").ancestor == 1
    best = parse_ref("best:val_loss")
    assert (best.kind, best.metric, best.direction) == ("best", "val_loss", "min")
    assert parse_ref("best:f1:max").direction == "max"
    assert parse_ref("best:val_loss:max").direction == "max"  # explicit wins over inference
    assert parse_ref("3f2a9c1d").looks_like_id
    tag = parse_ref("baseline")
    assert tag.kind == "name" and tag.value == "baseline" and not tag.looks_like_id


@pytest.mark.parametrize("bad", ["", "   ", "best:", "best:acc:up", "a/b", "../x", "HEAD~x~", "a:b", "x\n"])
def test_malformed_refs_raise_the_project_error(bad):
    with pytest.raises(UnknownRefError):
        parse_ref(bad)


@pytest.mark.parametrize("good", ["model", "model_2", "baseline", "v1.0", "prod-eu", "naïve"])
def test_good_names(good):
    assert validate_name(good, "tag") == good


@pytest.mark.parametrize(
    "bad", ["", "a/b", "a\\b", "..", "x..y", ".hidden", "tab\there", "nul\x00", "HEAD", "latest",
            "best:x", "a~1", "/abs", "x" * 200, "semi;colon", 5],
)
def test_bad_names_are_refused(bad):
    with pytest.raises(InvalidNameError):
        validate_name(bad, "tag")
