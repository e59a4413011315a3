"""Crash-safe files: atomic writes, checksummed checkpoint folders, and finding the last good one.

A checkpoint is a folder ``checkpoint-{step:06d}`` holding the LoRA adapter, optimizer and
scheduler states, every RNG state, the data position and the metrics so far, plus a
``manifest.json`` with the SHA-256 of each file. It is written under a temporary name and renamed
into place only when complete, and a folder whose manifest is missing or whose checksums do not
match is never loaded. A run killed at any moment (during a step or during a save) therefore
resumes from the last complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

MANIFEST = "manifest.json"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename the result onto ``path`` (same folder, so atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_manifest(folder: Path, meta: dict[str, Any] | None = None) -> None:
    files = {str(p.relative_to(folder)): sha256_file(p)
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    atomic_write_text(folder / MANIFEST, json.dumps({"files": files, **(meta or {})}, indent=1))


def verify(folder: str | Path) -> bool:
    """True when ``folder`` has a manifest and every listed file exists with its checksum."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all(sha256_file(folder / name) == digest
                   for name, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _test_pause() -> None:
    """Test hook: ``DPHRL_TEST_SLOW_SAVE=seconds`` pauses between the stages of a save, so that the
    kill-and-resume test (tests/test_reliability.py) can land a SIGKILL inside one."""
    delay = os.environ.get("DPHRL_TEST_SLOW_SAVE")
    if delay:
        time.sleep(float(delay))


def save_folder(final: str | Path, fill: Callable[[Path], Any], meta: dict[str, Any] | None = None) -> Path:
    """Write a folder atomically: ``fill(tmp_folder)``, add the manifest, rename into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        fill(tmp)
        _test_pause()
        write_manifest(tmp, meta)
        _test_pause()
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb+") as handle:
                    os.fsync(handle.fileno())
        _test_pause()
        if final.exists():  # an older copy of the same step: move it aside, then drop it
            stale = final.with_name(f".{final.name}.stale")
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete, verified checkpoint folders in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = sorted(p for p in output_dir.glob("checkpoint-*") if p.is_dir() and not p.name.startswith("."))
    return [p for p in found if verify(p)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    complete = checkpoints(output_dir)
    return complete[-1] if complete else None


def prune(output_dir: str | Path, keep: int = 2) -> None:
    """Delete all but the newest ``keep`` complete checkpoints and any abandoned temporary folders."""
    output_dir = Path(output_dir)
    for p in checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    for p in output_dir.glob(".checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)
