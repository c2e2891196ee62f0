"""The pipeline's contract: clear errors for bad names, metrics merged atomically, stages cached."""
from __future__ import annotations

import json

import pytest

from utils import pipeline
from utils.profiles import get_profile


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown profile 'huge'.*course.*tiny"):
        get_profile("huge")


def test_unknown_stage_names_the_choices(tiny_results):
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['fly'\].*'data'"):
        pipeline.run(["data", "fly"], "tiny")


def test_cli_reports_bad_input_and_exits_2(tiny_results, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(["--profile", "huge"])
    assert exit_info.value.code == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err


def test_metrics_are_merged_not_overwritten(tiny_results):
    path = pipeline.metrics_path()
    path.unlink(missing_ok=True)
    pipeline.update_metrics({"a.x": 1})
    pipeline.update_metrics({"b.y": 2})
    assert json.loads(path.read_text()) == {"a.x": 1, "b.y": 2}
    pipeline.update_metrics({"a.z": 3}, stage="a")  # a stage's fresh keys replace all of its old ones
    assert json.loads(path.read_text()) == {"a.z": 3, "b.y": 2}
