"""The wheel a user installs: one built-in model inside, at most 15 MB."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_WHEEL_BYTES = 15 * 2**20


@pytest.mark.slow
def test_wheel_is_small_and_holds_the_one_built_in_model(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("dphrl_mini-*.whl")
    assert wheel.stat().st_size <= MAX_WHEEL_BYTES, f"{wheel.name}: {wheel.stat().st_size / 2**20:.1f} MB"
    names = zipfile.ZipFile(wheel).namelist()
    models = {Path(n).parent.name for n in names if n.endswith("model.safetensors")}
    assert models == {"tiny"}
    assert "dphrl_mini/assets/tiny/tokenizer.json" in names and "dphrl_mini/assets/tiny/config.json" in names
