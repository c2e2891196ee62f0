"""Artifacts (datasets, tokenizer, models) cached under ``results/``, keyed by the config that made them.

Every stage of the course asks for its inputs with :func:`get_or_build`. If an artifact with the same
key exists and is complete, it is loaded; otherwise it is built once and written *atomically*: into a
temporary folder first, with a manifest of SHA-256 checksums written last, then renamed into place. A
folder without a manifest (an interrupted build) or whose files do not match it (a corrupted copy) is
detected, reported and rebuilt, never loaded. So any notebook can run alone, and no stage runs twice.

What a crash or a user leaves behind never jams the cache: an unreadable manifest (garbled JSON, bytes
that are not UTF-8) means "rebuild"; a ``.tmp-*`` build folder whose builder died is removed by the next
:func:`get_or_build`; a file a user put into an artifact folder is moved aside to
``artifacts/.orphaned/`` (with a warning saying where) before the artifact is rebuilt, never deleted; and
:func:`read_json_or_reset` reads a JSON file such as ``results/metrics.json`` that may be corrupt.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
ORPHANED = ".orphaned"  # under artifacts/: files found in an artifact folder that its manifest does not list
TMP_PREFIX = ".tmp-"  # build folders: f"{TMP_PREFIX}{artifact name}-{random}" until renamed into place


def results_dir() -> Path:
    """Root of everything the course generates: ``$RLHF_RESULTS_DIR`` or ``<repo>/results``."""
    root = os.environ.get("RLHF_RESULTS_DIR")
    return Path(root) if root else Path(__file__).resolve().parents[1] / "results"


def run_dir(seed: int | None = None) -> Path:
    """Where one run's outputs go (``metrics.json``, ``samples.md``, ``figures/``): ``results/`` for run seed 0,
    ``results/seed-N/`` for run seed N (default: ``$RLHF_SEED``). The cached artifacts of every seed share
    ``results/artifacts/``, since their keys already differ."""
    from utils.seed import run_seed

    seed = run_seed() if seed is None else seed
    return results_dir() if seed == 0 else results_dir() / f"seed-{seed}"


def config_key(config: Any) -> str:
    """A short stable hash of a (nested) dataclass or JSON-able value."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _recorded_files(folder: Path) -> dict[str, str] | None:
    """The manifest's ``{relative path: sha256}``, or None when the manifest is missing or unreadable.

    Unreadable covers everything a crash, a bad copy or a stray editor can leave: bytes that are not
    UTF-8, text that is not JSON, JSON of the wrong shape. None of these may raise: each one just means
    that the artifact has to be rebuilt.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # ValueError covers UnicodeDecodeError and json.JSONDecodeError
        return None
    recorded = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        return None
    return recorded


def is_complete(folder: Path) -> bool:
    """True if ``folder`` holds a readable manifest and every file matches its recorded checksum."""
    recorded = _recorded_files(folder)
    if recorded is None:
        return False
    present = {str(p.relative_to(folder)) for p in _files(folder)}
    if present != set(recorded):
        return False
    try:
        return all(_sha256(folder / name) == digest for name, digest in recorded.items())
    except OSError:  # a file vanished or cannot be read: as good as corrupt
        return False


def write_manifest(folder: Path, meta: dict | None = None) -> None:
    files = {str(p.relative_to(folder)): _sha256(p) for p in _files(folder)}
    atomic_write_text(folder / MANIFEST, json.dumps({"files": files, "meta": meta or {}}, indent=1))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; artifacts are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def artifact_dir(stage: str, config: Any) -> Path:
    return results_dir() / "artifacts" / f"{stage}-{config_key(config)}"


def _lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


def get_or_build(stage: str, config: Any, build: Callable[[Path], dict | None]) -> Path:
    """The folder of a complete artifact for ``(stage, config)``, building it if needed.

    ``build(tmp_folder)`` writes the artifact's files into ``tmp_folder`` and may return metadata
    (e.g. training time) that is stored in the manifest; see :func:`read_meta`.
    """
    final = artifact_dir(stage, config)
    remove_stale_builds(final.parent)
    if final.exists() and is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time per artifact: a second process (another notebook, a test run) waits here,
    # then finds the finished artifact instead of building it again.
    with open(_lock_path(final), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_locked(final, config, build)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def remove_stale_builds(artifacts: Path) -> list[Path]:
    """Remove the ``.tmp-*`` build folders under ``artifacts`` that no live builder holds; returns them.

    A builder holds its artifact's lock for as long as its temporary folder exists, so a folder whose
    lock can be taken at once belongs to a build that died (killed, power cut). Only a non-blocking try:
    a live build, in this process or another, keeps its folder, and nobody waits here. A nested build
    (one ``build`` asking for another artifact) is safe too: flock locks held through one open file are
    refused to another open file even in the same process.
    """
    removed: list[Path] = []
    if not artifacts.is_dir():
        return removed
    for tmp in sorted(artifacts.glob(f"{TMP_PREFIX}*")):
        name = tmp.name[len(TMP_PREFIX) :].rpartition("-")[0]  # mkdtemp's random suffix has no "-"
        if not tmp.is_dir() or not name:
            continue
        with open(_lock_path(artifacts / name), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its builder is alive
            try:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
                    logger.warning("removed %s, left by a build that did not finish", tmp)
                    removed.append(tmp)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return removed


def _aside_folder(artifacts: Path, name: str) -> Path:
    """A new, empty ``artifacts/.orphaned/<name>-<time>`` folder (a counter keeps two in one second apart)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = artifacts / ORPHANED / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot find a free folder name for {name} under {artifacts / ORPHANED}")


def _move_unlisted_files_aside(final: Path) -> Path | None:
    """Move what the manifest of ``final`` does not list to ``.orphaned/``; returns where, or None.

    Those files were not written by a build (a build's every file is in its manifest), so they are a
    user's: a rebuild must not destroy them. Without a readable manifest nothing in the folder is known
    to be ours, so all of it is moved.
    """
    recorded = _recorded_files(final)
    unlisted = [p for p in _files(final) if recorded is None or str(p.relative_to(final)) not in recorded]
    if recorded is None and (final / MANIFEST).exists():
        unlisted.append(final / MANIFEST)  # keep the garbled manifest with the files it described
    if not unlisted:
        return None
    aside = _aside_folder(final.parent, final.name)
    for path in unlisted:
        target = aside / path.relative_to(final)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
    logger.warning(
        "artifact %s held %d file(s) that its manifest does not list; moved them to %s", final, len(unlisted), aside
    )
    return aside


def _build_locked(final: Path, config: Any, build: Callable[[Path], dict | None]) -> Path:
    if final.exists():
        if is_complete(final):
            return final
        logger.warning("artifact %s is partial or corrupt; rebuilding it", final)
        _move_unlisted_files_aside(final)
        shutil.rmtree(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{TMP_PREFIX}{final.name}-"))
    try:
        if dataclasses.is_dataclass(config):
            (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1, default=str))
        meta = build(tmp) or {}
        write_manifest(tmp, meta)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_meta(folder: Path) -> dict:
    """The metadata a build returned (see :func:`get_or_build`)."""
    return json.loads((Path(folder) / MANIFEST).read_text()).get("meta", {})


def read_json_or_reset(path: Path) -> dict:
    """The JSON object in ``path``; ``{}`` when the file is missing or unreadable (moved aside first).

    For files the pipeline only ever merges into, such as ``results/metrics.json``: a corrupt copy (cut
    short by a full disk, bytes that are not UTF-8, a bad hand edit) would otherwise fail every later
    run. It is renamed to ``<name>.corrupt-<time>`` beside itself, with a warning saying where, and the
    caller starts afresh: each stage writes its own keys again when it runs.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:  # ValueError covers UnicodeDecodeError and json.JSONDecodeError
        problem = f"is not readable JSON ({type(err).__name__}: {err})"
    else:
        if isinstance(data, dict):
            return data
        problem = f"holds a JSON {type(data).__name__}, not an object"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = next(
        candidate
        for n in range(1000)
        if not (candidate := path.with_name(f"{path.name}.corrupt-{stamp}" + (f"-{n}" if n else ""))).exists()
    )
    os.replace(path, aside)
    logger.warning("%s %s; moved it to %s and starting afresh", path, problem, aside)
    return {}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {line_number} is not valid JSON ({err.msg})") from err
    return rows
