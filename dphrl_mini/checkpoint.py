"""Crash-safe files: atomic writes, checksummed checkpoint folders, and finding the last good one.

A checkpoint is a folder ``checkpoint-{step:06d}`` holding the LoRA adapter, optimizer and
scheduler states, every RNG state, the data position and the metrics so far, plus a
``manifest.json`` with the SHA-256 of each file. It is written under a temporary name and renamed
into place only when complete, and a folder whose manifest is missing, does not list exactly the
folder's files, or whose checksums do not match is never loaded (``checkpoint_problem`` says why).
Old checkpoints are pruned by renaming them to a hidden name first, so a kill during a prune leaves
only hidden debris, which ``remove_leftovers`` deletes at the next start. A run killed at any moment
(during a step, a save or a prune) therefore resumes from the last complete checkpoint.

A run owns its folder through ``run.lock`` (pid and host): ``lock_folder`` refuses a folder that a
live run holds and takes over, with a warning, a lock whose process is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

MANIFEST = "manifest.json"
LOCK = "run.lock"


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


def make_folder(path: str | Path, field: str = "output_dir") -> Path:
    """``mkdir -p`` with a one-line error when ``path`` or a folder above it is a file."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"config field `{field}`={str(path)!r} is a file (or lies under one), not a folder; "
                         f"choose another {field}") from None
    return path


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


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when it is: its manifest must list every
    file of the folder (and nothing else), each with its checksum."""
    folder = Path(folder)
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"it has no {MANIFEST} (its save never finished)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its {MANIFEST} is unreadable ({error})"
    if not isinstance(listed, dict) or not listed:
        return f"its {MANIFEST} lists no files"
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
    missing, unlisted = sorted(set(listed) - present), sorted(present - set(listed))
    if missing:
        return f"{missing[0]} is missing"
    if unlisted:
        return f"{unlisted[0]} is not listed in {MANIFEST}"
    for name, digest in listed.items():
        if sha256_file(folder / name) != digest:
            return f"{name} does not match its checksum (corrupt or half-written)"
    return None


def verify(folder: str | Path) -> bool:
    """True when ``folder`` is a complete checkpoint (``checkpoint_problem`` finds nothing)."""
    return checkpoint_problem(folder) is None


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


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """Every ``checkpoint-*`` folder in ``output_dir``, complete or not, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.glob("checkpoint-*") if p.is_dir())


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete, verified checkpoint folders in ``output_dir``, oldest first."""
    return [p for p in checkpoint_folders(output_dir) if verify(p)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    complete = checkpoints(output_dir)
    return complete[-1] if complete else None


def _delete(folder: Path) -> None:
    """Rename ``folder`` to a hidden name, then delete it: a kill midway leaves no ``checkpoint-*``."""
    hidden = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(hidden, ignore_errors=True)
    os.replace(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def prune(output_dir: str | Path, keep: int = 2) -> None:
    """Delete all but the newest ``keep`` complete checkpoints and any abandoned temporary folders."""
    output_dir = Path(output_dir)
    for p in checkpoints(output_dir)[:-keep] if keep > 0 else []:
        _delete(p)
    for p in output_dir.glob(".checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)


def remove_leftovers(output_dir: str | Path) -> list[str]:
    """Delete what a killed save or prune left behind, and return the names: hidden ``.checkpoint-*``
    folders, and incomplete ``checkpoint-*`` folders older than the newest complete one (a prune
    that an earlier version did not finish). Call it only while holding the folder's lock."""
    output_dir = Path(output_dir)
    removed = [p for p in output_dir.glob(".checkpoint-*") if p.is_dir()]
    complete = checkpoints(output_dir)
    if complete:
        removed += [p for p in checkpoint_folders(output_dir) if p < complete[-1] and p not in complete]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return sorted(p.name for p in removed)


# --- one run per folder ----------------------------------------------------------------------------
class FolderInUseError(ValueError):
    """Another live run holds the output folder's lock."""


_held: set[Path] = set()  # lock files this process holds (a second run in one process is refused too)


def _lock_owner(path: Path) -> dict[str, Any] | None:
    """The lock's ``{"pid", "host"}``; ``{}`` when unreadable (being written); None when gone."""
    try:
        owner = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _owner_gone(owner: dict[str, Any], path: Path) -> bool:
    """True only when the owner ran on this host and its process no longer exists."""
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if pid == os.getpid():  # our pid in a lock we do not hold: a dead run whose pid was reused
        return path.resolve() not in _held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's
        return False
    return False


def lock_folder(folder: str | Path) -> Path:
    """Make this process the only run in ``folder``: create ``run.lock`` with our pid and host.

    Raises ``FolderInUseError`` when another live run (or one on another host) holds it; a lock left
    by a process that is gone is taken over with a warning."""
    path = Path(folder) / LOCK
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is None:  # released meanwhile
                continue
            who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
            if not _owner_gone(owner, path):
                raise FolderInUseError(
                    f"output_dir {path.parent} is in use by another run ({who}, lock {path}); wait for it "
                    "to finish or choose another output_dir. If no run uses it any more, delete the lock file"
                ) from None
            warnings.warn(f"taking over the lock of output_dir {path.parent}: the run that held it ({who}) is gone")
            stale = path.with_name(f".{LOCK}.{os.getpid()}.stale")
            try:
                os.replace(path, stale)
                os.unlink(stale)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        _held.add(path.resolve())
        return path
    raise FolderInUseError(f"could not lock output_dir {path.parent}: other runs keep taking it")


def unlock_folder(path: str | Path) -> None:
    """Release a lock taken by ``lock_folder``."""
    path = Path(path)
    _held.discard(path.resolve())
    owner = _lock_owner(path)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
