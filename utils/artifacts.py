"""Artifacts (datasets, tokenizer, models) cached under ``results/``, keyed by the config that made them.

Every stage of the course asks for its inputs with :func:`get_or_build`. If an artifact with the same
key exists and is complete, it is loaded; otherwise it is built once and written *atomically*: into a
temporary folder first, with a manifest of SHA-256 checksums written last, then renamed into place. A
folder without a manifest (an interrupted build) or whose files do not match it (a corrupted copy) is
detected, reported and rebuilt, never loaded. So any notebook can run alone, and no stage runs twice.
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
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"


def results_dir() -> Path:
    """Root of everything the course generates: ``$RLHF_RESULTS_DIR`` or ``<repo>/results``."""
    root = os.environ.get("RLHF_RESULTS_DIR")
    return Path(root) if root else Path(__file__).resolve().parents[1] / "results"


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


def is_complete(folder: Path) -> bool:
    """True if ``folder`` holds a manifest and every file matches its recorded checksum."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        recorded = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return False
    present = {str(p.relative_to(folder)) for p in _files(folder)}
    if present != set(recorded):
        return False
    return all(_sha256(folder / name) == digest for name, digest in recorded.items())


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


def get_or_build(stage: str, config: Any, build: Callable[[Path], dict | None]) -> Path:
    """The folder of a complete artifact for ``(stage, config)``, building it if needed.

    ``build(tmp_folder)`` writes the artifact's files into ``tmp_folder`` and may return metadata
    (e.g. training time) that is stored in the manifest; see :func:`read_meta`.
    """
    final = artifact_dir(stage, config)
    if final.exists() and is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time per artifact: a second process (another notebook, a test run) waits here,
    # then finds the finished artifact instead of building it again.
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_locked(final, config, build)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_locked(final: Path, config: Any, build: Callable[[Path], dict | None]) -> Path:
    if final.exists():
        if is_complete(final):
            return final
        logger.warning("artifact %s is partial or corrupt; rebuilding it", final)
        shutil.rmtree(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
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
