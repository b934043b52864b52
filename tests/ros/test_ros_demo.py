"""`scripts/run_demo.sh` (what `make demo` runs): demo camera -> node -> listener printing captions from
/region_captions, annotated frames written to a folder, and a stop by itself."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_demo_prints_captions_and_writes_annotated_frames(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run(["bash", str(ROOT / "scripts" / "run_demo.sh"), "--frames", "2", "--out", str(out),
                          "--timeout", "240", "--rate", "2"],
                         capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "VENV": str(Path(sys.prefix))})
    assert run.returncode == 0, run.stdout + run.stderr
    blocks = [line for line in run.stdout.splitlines() if "caption(s)" in line]
    assert len(blocks) == 2, run.stdout
    assert "| truth: a " in run.stdout  # the demo camera's true captions are printed next to the model's
    frames = sorted(out.glob("annotated_*.png"))
    assert len(frames) == 2, run.stdout
    with Image.open(frames[0]) as img:
        pixels = np.asarray(img)
    assert pixels.shape[1] == 512 and pixels.shape[0] > 512  # 2x frame + caption panel
    assert "Traceback" not in (out / "node.log").read_text()
