"""Atomic files and checksummed checkpoint folders."""

import json
import os
import socket
import subprocess
import sys

import pytest

from dphrl_mini import checkpoint as ckpt


def _fill(text):
    def fill(folder):
        (folder / "a.txt").write_text(text)
        (folder / "sub").mkdir()
        (folder / "sub" / "b.bin").write_bytes(text.encode() * 3)
    return fill


def test_save_verify_latest(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_folder(tmp_path / f"checkpoint-{step:06d}", _fill(f"step {step}"), meta={"step": step})
    assert [p.name for p in ckpt.checkpoints(tmp_path)] == [f"checkpoint-{s:06d}" for s in (1, 2, 3)]
    assert json.loads((tmp_path / "checkpoint-000003" / "manifest.json").read_text())["step"] == 3
    ckpt.prune(tmp_path, keep=2)
    assert [p.name for p in ckpt.checkpoints(tmp_path)] == ["checkpoint-000002", "checkpoint-000003"]


def test_corrupt_or_partial_checkpoints_are_skipped(tmp_path):
    ckpt.save_folder(tmp_path / "checkpoint-000001", _fill("good"))
    ckpt.save_folder(tmp_path / "checkpoint-000002", _fill("bad"))
    (tmp_path / "checkpoint-000002" / "a.txt").write_text("tampered")
    partial = tmp_path / "checkpoint-000003"  # killed before its manifest was written
    partial.mkdir()
    (partial / "a.txt").write_text("half")
    (tmp_path / ".checkpoint-000004.xyz.tmp").mkdir()  # an abandoned temporary folder
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-000001"


def test_failed_write_leaves_old_file(tmp_path):
    target = tmp_path / "x.txt"
    ckpt.atomic_write_text(target, "old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    try:
        ckpt.atomic_write(target, boom)
    except RuntimeError:
        pass
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_manifest_must_list_every_file(tmp_path):
    ckpt.save_folder(tmp_path / "checkpoint-000001", _fill("good"))
    empty = tmp_path / "checkpoint-000002"  # a manifest that lists nothing, beside a truncated file
    empty.mkdir()
    (empty / "state.pt").write_bytes(b"trunc")
    (empty / "manifest.json").write_text(json.dumps({"files": {}}))
    extra = tmp_path / "checkpoint-000003"
    ckpt.save_folder(extra, _fill("extra"))
    (extra / "sub" / "unlisted.bin").write_bytes(b"?")
    assert ckpt.checkpoint_problem(empty) == "its manifest.json lists no files"
    assert ckpt.checkpoint_problem(extra) == "sub/unlisted.bin is not listed in manifest.json"
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-000001"


def test_a_kill_inside_prune_leaves_no_checkpoint_folder(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        ckpt.save_folder(tmp_path / f"checkpoint-{step:06d}", _fill(f"step {step}"))
    real = ckpt.shutil.rmtree

    def killed_midway(path, ignore_errors=False):
        if ".deleting" in str(path) and path.exists():
            (path / "a.txt").unlink()  # half deleted, then the process dies
            raise KeyboardInterrupt
        real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune(tmp_path, keep=2)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real)
    assert [p.name for p in ckpt.checkpoint_folders(tmp_path)] == ["checkpoint-000002", "checkpoint-000003"]
    assert ckpt.remove_leftovers(tmp_path) == [".checkpoint-000001.deleting"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000002", "checkpoint-000003"]


def test_leftovers_of_an_unfinished_prune_are_removed(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_folder(tmp_path / f"checkpoint-{step:06d}", _fill(f"step {step}"))
    (tmp_path / "checkpoint-000001" / "a.txt").unlink()  # half deleted by a prune that was killed
    (tmp_path / ".checkpoint-000004.xyz.tmp").mkdir()  # a killed save
    newer = tmp_path / "checkpoint-000009"  # incomplete but newer than every good one: kept, only skipped
    newer.mkdir()
    assert ckpt.remove_leftovers(tmp_path) == [".checkpoint-000004.xyz.tmp", "checkpoint-000001"]
    assert [p.name for p in ckpt.checkpoint_folders(tmp_path)] == ["checkpoint-000002", "checkpoint-000003",
                                                                   "checkpoint-000009"]


# --- one run per folder ------------------------------------------------------------------------------
def _write_lock(folder, pid, host=None):
    (folder / ckpt.LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def test_lock_refuses_a_live_run_and_releases(tmp_path):
    lock = ckpt.lock_folder(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    with pytest.raises(ckpt.FolderInUseError, match=f"in use by another run \\(pid {os.getpid()} on host"):
        ckpt.lock_folder(tmp_path)  # a second run in the same process
    ckpt.unlock_folder(lock)
    assert not lock.exists()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            _write_lock(tmp_path, other.pid)
            with pytest.raises(ckpt.FolderInUseError, match=f"pid {other.pid} on host .*another output_dir"):
                ckpt.lock_folder(tmp_path)
        finally:
            other.kill()
    _write_lock(tmp_path, 1234, host="another-machine")  # cannot tell whether it still runs: refused
    with pytest.raises(ckpt.FolderInUseError, match="another-machine.*delete the lock file"):
        ckpt.lock_folder(tmp_path)


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_lock(tmp_path, gone.pid)
    with pytest.warns(UserWarning, match=f"taking over the lock .*pid {gone.pid} on host .* is gone"):
        lock = ckpt.lock_folder(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    ckpt.unlock_folder(lock)
