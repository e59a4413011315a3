"""Atomic files and checksummed checkpoint folders."""

import json

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
