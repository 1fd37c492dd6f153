"""The GPU benchmarks' own smoke runs (`--tiny --device cpu`): they must still run end to end on the current
pipeline (a benchmark that fails on the device wastes its device time) and measure what their reports say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *flags: str, out: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--tiny", "--device", "cpu", *flags, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_fast_preset_benchmark_times_one_8_step_two_pass_clip(tmp_path):
    _run("bench_fast_preset.py", "--setups", "bf16,int8_dynamic+latents", out=tmp_path)
    result = json.loads((tmp_path / "bench_fast_preset.json").read_text())
    assert result["preset"] == "fast" and result["device"] == "cpu" and result["total_s"] > 0
    first, second = result["runs"]
    assert "error" not in first and "error" not in second, result["runs"]
    assert first["dit_forwards"] == 16  # one chunk (clip mode): 8 steps x 2 guidance passes
    assert first["latents_finite"] and 0 < second["latents_rel_l2_vs_reference"] < 0.1


def test_pipeline_benchmark_times_a_two_person_clip(tmp_path):
    _run("bench_pipeline.py", "--steps", "2", out=tmp_path)
    result = json.loads((tmp_path / "bench_pipeline.json").read_text())
    assert result["passes"] == 6  # one chunk of 2 steps x 3 guidance passes
    assert result["total"] > 0 and "DiT forwards" in json.dumps(result["phases"])
