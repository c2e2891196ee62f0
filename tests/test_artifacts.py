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


DAMAGES = [
    "truncate",
    "delete_manifest",
    "extra_file",
    "garbage_manifest",
    "non_utf8_manifest",
    "list_manifest",
    "files_not_a_dict",
]


def _damage(folder, damage):
    manifest = folder / artifacts.MANIFEST
    if damage == "truncate":
        (folder / "numbers.json").write_text("[0, 1")
    elif damage == "delete_manifest":
        manifest.unlink()
    elif damage == "extra_file":
        (folder / "stray.bin").write_bytes(b"\0")
    elif damage == "garbage_manifest":
        manifest.write_text("{not json")
    elif damage == "non_utf8_manifest":  # one flipped byte: json.loads(read_text()) raised UnicodeDecodeError
        manifest.write_bytes(manifest.read_bytes().replace(b"{", b"\xff", 1))
    elif damage == "list_manifest":
        manifest.write_text("[1, 2]")
    else:
        manifest.write_text(json.dumps({"files": ["numbers.json"], "meta": {}}))


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_artifact_is_rebuilt_not_loaded(results, damage):
    calls = []
    folder = artifacts.get_or_build("toy", ToyConfig(), _builder(calls))
    _damage(folder, damage)
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
    threads = [
        threading.Thread(target=lambda: folders.append(artifacts.get_or_build("toy", ToyConfig(9), slow_build)))
        for _ in range(3)
    ]
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


# ---------------------------------------------------------------- what crashes and users leave behind


def _stale_build(results, config=ToyConfig()):
    """A build folder as a run killed mid-build leaves it: files, no manifest, nobody holding the lock."""
    final = artifacts.artifact_dir("toy", config)
    tmp = final.parent / f"{artifacts.TMP_PREFIX}{final.name}-k1ll3d_x"
    (tmp / "sub").mkdir(parents=True)
    (tmp / "sub" / "half.bin").write_bytes(b"\0" * 10)
    return tmp


def test_stale_build_folders_are_removed_by_the_next_run(results, caplog):
    stale = [_stale_build(results), _stale_build(results, ToyConfig(7))]  # one for another artifact, too
    calls = []
    with caplog.at_level("WARNING", logger="utils.artifacts"):
        folder = artifacts.get_or_build("toy", ToyConfig(), _builder(calls))
    assert not any(s.exists() for s in stale) and artifacts.is_complete(folder) and len(calls) == 1
    assert sum("did not finish" in r.getMessage() for r in caplog.records) == 2
    # A run that builds nothing cleans up as well.
    late = _stale_build(results)
    assert artifacts.get_or_build("toy", ToyConfig(), _builder(calls)) == folder and len(calls) == 1
    assert not late.exists()


def test_a_live_build_keeps_its_folder(results):
    """A builder's temporary folder survives everyone else's clean-up, also a nested build of its own."""
    seen = {}

    def inner_build(folder):
        (folder / "inner.txt").write_text("inner")

    def outer_build(folder):
        (folder / "outer.txt").write_text("outer")
        artifacts.get_or_build("toy", ToyConfig(2), inner_build)  # cleans up while the outer build runs
        seen["outer_tmp_alive"] = folder.exists()

    outer = artifacts.get_or_build("toy", ToyConfig(1), outer_build)
    assert seen == {"outer_tmp_alive": True} and (outer / "outer.txt").read_text() == "outer"


def test_a_live_build_in_another_process_keeps_its_folder(results):
    """The lock a builder holds in another process (here: a child holding it with flock) protects its folder."""
    import subprocess
    import sys

    tmp = _stale_build(results)
    final = artifacts.artifact_dir("toy", ToyConfig())
    lock = final.parent / f".{final.name}.lock"  # the lock get_or_build holds while it builds `final`
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); sys.stdin.read()",
            str(lock),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert artifacts.remove_stale_builds(tmp.parent) == [] and tmp.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert artifacts.remove_stale_builds(tmp.parent) == [tmp] and not tmp.exists()


def test_user_files_in_an_artifact_are_moved_aside_not_deleted(results, caplog):
    calls = []
    folder = artifacts.get_or_build("toy", ToyConfig(), _builder(calls))
    (folder / "notes.txt").write_text("my notes")
    (folder / "mine").mkdir()
    (folder / "mine" / "plot.png").write_bytes(b"\x89PNG")
    (folder / "numbers.json").write_text("[0, 1")  # damage too: ours, so it is rebuilt, not kept
    with caplog.at_level("WARNING", logger="utils.artifacts"):
        again = artifacts.get_or_build("toy", ToyConfig(), _builder(calls))
    assert len(calls) == 2 and artifacts.is_complete(again)
    [aside] = list((results / "artifacts" / artifacts.ORPHANED).iterdir())
    assert aside.name.startswith(folder.name + "-")
    assert sorted(str(p.relative_to(aside)) for p in aside.rglob("*") if p.is_file()) == ["mine/plot.png", "notes.txt"]
    assert (aside / "notes.txt").read_text() == "my notes" and (aside / "mine" / "plot.png").read_bytes() == b"\x89PNG"
    assert any(str(aside) in r.getMessage() for r in caplog.records)  # the warning says where they went


def test_without_a_readable_manifest_everything_is_moved_aside(results):
    calls = []
    folder = artifacts.get_or_build("toy", ToyConfig(), _builder(calls))
    (folder / artifacts.MANIFEST).write_bytes(b"\xff\xfe garbled")
    (folder / "notes.txt").write_text("my notes")
    artifacts.get_or_build("toy", ToyConfig(), _builder(calls))
    [aside] = list((results / "artifacts" / artifacts.ORPHANED).iterdir())
    assert sorted(p.name for p in aside.iterdir()) == sorted(
        [artifacts.MANIFEST, "config.json", "notes.txt", "numbers.json"]
    )
    # A second time in the same second gets its own folder.
    (folder / "notes.txt").write_text("more notes")
    (folder / "numbers.json").write_text("[]")
    artifacts.get_or_build("toy", ToyConfig(), _builder(calls))
    assert len(list((results / "artifacts" / artifacts.ORPHANED).iterdir())) == 2


# ---------------------------------------------------------------- a JSON file that may be corrupt


@pytest.mark.parametrize("content", [b'{"lm.loss": 1.5, "rm', b'{"a": 1}\xff', b"[1, 2]", b""])
def test_corrupt_json_is_moved_aside_and_reset(tmp_path, caplog, content):
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with caplog.at_level("WARNING", logger="utils.artifacts"):
        assert artifacts.read_json_or_reset(path) == {}
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("metrics.json.corrupt-")]
    assert aside.read_bytes() == content and not path.exists()
    assert str(aside) in caplog.text
    artifacts.atomic_write_json(path, {"lm.loss": 1.5})  # the caller starts afresh ...
    assert artifacts.read_json_or_reset(path) == {"lm.loss": 1.5}  # ... and a good file is read as it is


def test_missing_json_is_empty_and_nothing_is_moved(tmp_path):
    assert artifacts.read_json_or_reset(tmp_path / "metrics.json") == {}
    assert list(tmp_path.iterdir()) == []
