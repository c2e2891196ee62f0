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


def test_stages_flag_with_no_names_is_a_usage_error(tiny_results, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(["--profile", "tiny", "--stages"])
    assert exit_info.value.code == 2
    assert "--stages needs at least one stage" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no stages given"):
        pipeline.run([], "tiny")


def test_bad_thread_count_names_the_variable(tiny_results, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_NUM_THREADS", "two")
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(["--profile", "tiny", "--stages", "data"])
    assert exit_info.value.code == 2
    assert "RLHF_NUM_THREADS='two' is not an integer" in capsys.readouterr().err


def test_a_failing_stage_is_reported_with_its_name_and_traceback(tiny_results, monkeypatch, capsys, caplog):
    def broken(profile):
        raise ValueError("the reward model's config is inconsistent")

    monkeypatch.setitem(pipeline.STAGES, "data", broken)
    assert pipeline.main(["--profile", "tiny", "--stages", "data"]) == 1  # not a usage error (2)
    err = capsys.readouterr().err
    assert "stage 'data' failed: ValueError: the reward model's config is inconsistent" in err
    assert "usage:" not in err
    record = next(r for r in caplog.records if r.exc_info)
    assert record.exc_info[0] is pipeline.StageError
    assert isinstance(record.exc_info[1].__cause__, ValueError)  # the traceback reaches the failing line


def test_each_run_seed_has_its_own_metrics_file(tiny_results, monkeypatch):
    assert pipeline.metrics_path(0) == tiny_results / "metrics.json"
    assert pipeline.metrics_path(3) == tiny_results / "seed-3" / "metrics.json"
    monkeypatch.setenv("RLHF_SEED", "3")
    assert pipeline.metrics_path() == tiny_results / "seed-3" / "metrics.json"


def test_a_corrupt_metrics_file_is_set_aside_not_an_error_every_run(tiny_results):
    path = pipeline.metrics_path()
    path.write_bytes(b'{"a.x": 1, \xff')
    assert pipeline.update_metrics({"b.y": 2}) == {"b.y": 2}
    assert json.loads(path.read_text()) == {"b.y": 2}
    assert list(path.parent.glob("metrics.json.corrupt-*"))


def test_run_seed_shifts_every_stage_seed_and_only_the_seeds():
    import dataclasses

    from utils.profiles import SEED_STRIDE, with_run_seed

    base = get_profile("course", seed=0)
    assert with_run_seed(base, 0) is base
    moved = get_profile("course", seed=2)
    seeded = [
        f.name
        for f in dataclasses.fields(base)
        if dataclasses.is_dataclass(getattr(base, f.name))
        and "seed" in {g.name for g in dataclasses.fields(getattr(base, f.name))}
    ]
    assert {"data", "lm_train", "sft", "rm", "ppo", "evaluation"} <= set(seeded)
    for name in seeded:
        assert getattr(moved, name).seed == getattr(base, name).seed + 2 * SEED_STRIDE
        assert dataclasses.replace(getattr(moved, name), seed=getattr(base, name).seed) == getattr(base, name)
    assert moved.grammar == base.grammar  # the world itself does not change with the seed


def test_run_seed_comes_from_the_environment_and_names_it_when_bad(monkeypatch):
    monkeypatch.setenv("RLHF_SEED", "1")
    assert (
        get_profile("tiny").data.seed == get_profile("tiny", seed=1).data.seed != get_profile("tiny", seed=0).data.seed
    )
    monkeypatch.setenv("RLHF_SEED", "-1")
    with pytest.raises(ValueError, match=r"RLHF_SEED=-1 must be >= 0"):
        get_profile("tiny")
    monkeypatch.setenv("RLHF_SEED", "1.5")
    with pytest.raises(ValueError, match=r"RLHF_SEED='1.5' is not an integer"):
        get_profile("tiny")


def test_artifacts_of_different_run_seeds_do_not_share_a_key():
    from utils.artifacts import config_key
    from utils.stages.ppo import ppo_key

    keys = {config_key(ppo_key(get_profile("tiny", seed=s))) for s in (0, 1, 2)}
    assert len(keys) == 3
