"""Cached artifacts: built once, written atomically, partial or corrupt copies detected and rebuilt."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from utils import artifacts


@dataclass(frozen=True)
class ToyConfig:
    size: int = 3


@pytest.fixture()
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_RESULTS_DIR", str(tmp_path))
    return tmp_path


def _builder(calls):
    def build(folder):
        calls.append(folder)
        (folder / "numbers.json").write_text(json.dumps(list(range(3))))
        return {"seconds": 1.5}
    return build


def test_built_once_then_loaded(results):
    calls = []
    first = artifacts.get_or_build("toy", ToyConfig(), _builder(calls))
    second = artifacts.get_or_build("toy", ToyConfig(), _builder(calls))
    assert first == second and len(calls) == 1
    assert artifacts.read_meta(first) == {"seconds": 1.5}
    assert json.loads((first / "config.json").read_text()) == {"size": 3}


def test_key_depends_on_config(results):
    calls = []
    a = artifacts.get_or_build("toy", ToyConfig(3), _builder(calls))
    b = artifacts.get_or_build("toy", ToyConfig(4), _builder(calls))
    assert a != b and len(calls) == 2
    assert artifacts.config_key(ToyConfig(3)) == artifacts.config_key({"size": 3})


@pytest.mark.parametrize("damage", ["truncate", "delete_manifest", "extra_file", "garbage_manifest"])
def test_damaged_artifact_is_rebuilt_not_loaded(results, damage):
    calls = []
    folder = artifacts.get_or_build("toy", ToyConfig(), _builder(calls))
    if damage == "truncate":
        (folder / "numbers.json").write_text("[0, 1")
    elif damage == "delete_manifest":
        (folder / artifacts.MANIFEST).unlink()
    elif damage == "extra_file":
        (folder / "stray.bin").write_bytes(b"\0")
    else:
        (folder / artifacts.MANIFEST).write_text("{not json")
    assert not artifacts.is_complete(folder)
    again = artifacts.get_or_build("toy", ToyConfig(), _builder(calls))
    assert len(calls) == 2 and artifacts.is_complete(again)
    assert json.loads((again / "numbers.json").read_text()) == [0, 1, 2]


def test_failed_build_leaves_nothing_behind(results):
    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        artifacts.get_or_build("toy", ToyConfig(), broken)
    assert not artifacts.artifact_dir("toy", ToyConfig()).exists()
    leftovers = [p.name for p in (results / "artifacts").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []  # no temporary folder left either


def test_concurrent_builders_build_once(results):
    """Two notebooks asking for the same artifact at once: one builds, the other waits and loads."""
    import threading
    import time

    calls = []

    def slow_build(folder):
        calls.append(folder)
        time.sleep(0.3)
        (folder / "x.txt").write_text("x")

    folders = []
    threads = [threading.Thread(target=lambda: folders.append(
        artifacts.get_or_build("toy", ToyConfig(9), slow_build))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(folders)) == 1 and artifacts.is_complete(folders[0])


def test_atomic_write_and_jsonl_round_trip(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"text": "é"}]
    artifacts.write_jsonl(path, rows)
    assert artifacts.read_jsonl(path) == rows
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no temp file left


def test_corrupt_jsonl_names_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match="line 2"):
        artifacts.read_jsonl(path)
