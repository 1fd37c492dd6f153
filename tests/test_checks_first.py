"""Checks first: a bad flag value is refused before torch (or any model code) is imported, in one line naming the
flag. Asserted by what the process had imported when it answered, not by how long it took."""

import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "import sys\n"
    "from diffusers_multitalk import cli\n"
    "status = cli.main(sys.argv[1:])\n"
    "print('IMPORTED', 'torch' in sys.modules, any(m.startswith('diffusers_multitalk.pipelines') for m in sys.modules))\n"
    "sys.exit(status)\n"
)
BASE = ["generate", "--tiny", "--input_json", str(REPO / "examples" / "two_person_tiny.json")]


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--frame_num", "80"], "--frame_num 80: must be 4n+1"),
        (["--sample_steps", "0"], "--sample_steps 0: must be at least 1"),
        (["--height", "30", "--width", "32"], "--height 30: must be a positive multiple of 16"),
        (["--color_correction_strength", "2"], "--color_correction_strength 2.0: must be in [0, 1]"),
        (["--sample_audio_guide_scale", "-1"], "--sample_audio_guide_scale -1.0: must be 0 or more"),
    ],
)
def test_a_bad_flag_is_refused_before_torch_is_imported(flags, named, tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *BASE, "--save_file", str(tmp_path / "out"), *flags],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,  # generous for a loaded machine; the answer itself takes no model
    )
    assert run.returncode == 2, run.stderr[-2000:]  # a bad request: argparse's usage status
    assert named in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert "IMPORTED False False" in run.stdout, (run.stdout, run.stderr[-2000:])  # no torch, no pipeline code
    assert not list(tmp_path.iterdir()), "nothing is written on refusal"
