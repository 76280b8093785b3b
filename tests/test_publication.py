"""What a publish writes, decided without MLflow or DVC (core.publication): names, tags, the dvc.yaml entry."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mvc_magics.core.publication import (
    Publication,
    check_artifact_name,
    check_registered_name,
    check_target,
    dvc_artifact,
    dvc_format,
    mlflow_flavor,
    mlflow_run_tags,
    mlflow_version_tags,
)
from mvc_magics.core.version import Version
from mvc_magics.errors import PublishError


def version(**fields) -> Version:
    base = {"id": "ab" * 32, "name": "clf", "parents": (), "message": "", "created": datetime.now(timezone.utc),
            "author": "me@host", "metrics": {}, "params": {}, "framework": "sklearn", "short_id": "abababab"}
    return Version(**{**base, **fields})


def test_targets_and_names_are_checked_before_anything_is_written():
    assert check_target(" MLflow ") == "mlflow"
    with pytest.raises(PublishError, match="targets: mlflow, dvc"):
        check_target("s3")
    assert check_registered_name("digits classifier") == "digits classifier"
    for bad in ("", "x' or name = 'y", 'a"b'):
        with pytest.raises(PublishError, match="registered model name"):
            check_registered_name(bad)
    assert check_artifact_name("team/digits-v2") == "team/digits-v2"
    for bad in ("-x", "x-", "a b", "x:y", ""):
        with pytest.raises(PublishError, match="not a DVC artifact name"):
            check_artifact_name(bad)


def test_frameworks_map_to_flavors_and_formats_and_the_rest_is_refused():
    assert mlflow_flavor(version(framework="torch")) == "pytorch"
    assert dvc_format(version(framework="keras")) == ("keras", "model.keras")
    assert dvc_format(version(framework="tensorflow")) == ("savedmodel", "saved_model")
    with pytest.raises(PublishError, match="numpy model; MLflow publishing supports"):
        mlflow_flavor(version(framework="numpy"))
    with pytest.raises(PublishError, match="numpy model; DVC publishing supports"):
        dvc_format(version(framework="numpy"))


def test_tags_and_the_dvc_entry_carry_the_id_metrics_params_and_git_state():
    git = {"commit": "c" * 40, "branch": "main", "dirty": True, "remote": "https://example.com/r.git"}
    v = version(message="tuned", metrics={"val_acc": 0.9}, params={"C": 0.5, "layers": [1, 2]}, tags=("prod",),
                provenance={"git": git})
    assert mlflow_version_tags(v) == {"mvc_id": v.id, "mvc_model": "clf", "mvc_short_id": "abababab",
                                      "mvc_tags": "prod", "mvc_git_commit": "c" * 40 + "+dirty"}
    assert mlflow_run_tags(v)["mlflow.source.git.commit"] == "c" * 40
    assert mlflow_run_tags(v)["mlflow.source.git.repoURL"] == "https://example.com/r.git"
    assert dvc_artifact(v, "models/clf") == {
        "path": "models/clf", "type": "model", "desc": "tuned", "labels": ["prod"],
        "meta": {"mvc_id": v.id, "mvc_model": "clf", "framework": "sklearn", "metrics": {"val_acc": 0.9},
                 "params": {"C": 0.5, "layers": "[1, 2]"}}}
    bare = dvc_artifact(version(), "m")
    assert "desc" not in bare and "labels" not in bare and "metrics" not in bare["meta"]


def test_the_result_says_where_and_how_to_load_it():
    text = str(Publication("mlflow", "ab" * 32, "abababab", "registered model 'd' version 2", "load(...)", False))
    assert text == "already published: abababab to mlflow as registered model 'd' version 2\n  load it back: load(...)"
