"""What a new user meets first, through the real `multitalk` command: the whole audio by default, videos as long as
their audio, flat memory in length, early one-line errors, no half-written files on SIGTERM, a fast quiet `--help`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT / "benchmarks"))

from diffusers_multitalk.testing import stream_seconds  # noqa: E402


def multitalk(*flags, timeout=1800, **kwargs):  # a bound, generous for a busy CI
    return subprocess.run(
        [sys.executable, "-m", "diffusers_multitalk", *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kwargs.pop("cwd", ROOT),
        **kwargs,
    )


def decoded_audio(path):
    from diffusers_multitalk.pipelines.video_io import get_ffmpeg_exe

    raw = subprocess.run(
        [
            get_ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            "0:a:0",
            "-f",
            "f32le",
            "-ac",
            "1",
            "-ar",
            "16000",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.float32)


def test_readme_demo_holds_both_speakers(tmp_path):
    """The README's demo input with no --mode: both turns (5.88 s of speech) are in the mp4, and the run prints no
    warning (fewer steps and smaller frames than the README's command, same route)."""
    save = tmp_path / "demo"
    run = multitalk("generate", "--tiny", "--input_json", str(EXAMPLES / "two_person_tiny.json"), "--save_file",
                    str(save), "--sample_steps", "1", "--height", "32", "--width", "48")  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    video = Path(str(save) + ".mp4")
    speech = [sf.info(EXAMPLES / "assets" / f"speaker{n}.wav").duration for n in (1, 2)]
    assert abs(stream_seconds(video, "v") - sum(speech)) <= 0.15
    assert abs(stream_seconds(video, "a") - sum(speech)) <= 0.15
    audio = decoded_audio(video)
    second_turn = audio[int((speech[0] + 0.2) * 16000) : int((sum(speech) - 0.2) * 16000)]
    assert np.sqrt(np.mean(second_turn**2)) > 0.01, "person 2's turn is silent in the video"
    lines = [line for line in run.stderr.replace("\r", "\n").splitlines() if line.strip()]
    # torchao's own import-time messages (diffusers imports it when installed: the FP8 extra, in the test venv) are
    # not ours; the README's plain install has no torchao.
    ours = [line for line in lines if "torchao" not in line and "_pytree.py" not in line]
    noise = [line for line in ours if "warn" in line.lower() or "deprecat" in line.lower()]
    assert not noise, noise
    assert not (tmp_path / "save_audio").exists() and not (ROOT / "save_audio").exists()


def test_a_two_second_recording_gives_a_two_second_video(tmp_path):
    wave, rate = sf.read(EXAMPLES / "assets" / "speaker1.wav", dtype="float32")
    sf.write(tmp_path / "two_seconds.wav", wave[: 2 * rate], rate)
    (tmp_path / "input.json").write_text(
        json.dumps(
            {
                "prompt": "a person talks",
                "cond_image": str(EXAMPLES / "assets" / "two_people.png"),
                "cond_audio": {"person1": str(tmp_path / "two_seconds.wav")},
            }
        )
    )
    run = multitalk("generate", "--tiny", "--input_json", str(tmp_path / "input.json"), "--save_file",
                    str(tmp_path / "out"), "--sample_steps", "1", "--height", "32", "--width", "32")  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert abs(stream_seconds(tmp_path / "out.mp4", "v") - 2.0) <= 0.15
    assert abs(stream_seconds(tmp_path / "out.mp4", "a") - 2.0) <= 0.15


def test_a_minute_streams_to_its_end_in_flat_memory():
    """60 s of speech gives 60 s of video (no hidden cap), and the peak RSS stays within 60 MB of an 8 s run's.
    The benchmark's pooling stand-in replaces the tiny VAE's 3D convolutions (0.3 s a frame on a CPU), which hold no
    state from chunk to chunk; docs/streaming.md has the same measurement with the real tiny VAE."""
    from bench_streaming_memory import main as bench

    result = bench(["--seconds", "8", "60", "--cheap-vae", "--size", "80"])
    short, long = result["runs"]
    assert abs(short["video_s"] - 8.0) <= 0.15 and abs(long["video_s"] - 60.0) <= 0.15
    assert result["peak_rss_growth_mb"] < 60, result


# Runs `multitalk` in-process, then lists which of the model's modules were imported by the time it returned.
_MODEL_CODE_PROBE = """
import sys
from diffusers_multitalk import cli
status = cli.main(sys.argv[1:])
roots = ("diffusers_multitalk.models", "diffusers_multitalk.pipelines", "diffusers_multitalk.tiny")
print(sorted(m for m in sys.modules if any(m == r or m.startswith(r + ".") for r in roots)))
sys.exit(status)
"""


def test_unwritable_output_fails_before_any_model_code_in_one_line(tmp_path):
    """An output path that cannot be written is refused before the model's code is even imported (no model can have
    been built), in one line, leaving nothing behind. Checked by what ran, not by how long it took, so that a busy
    machine passes: a check placed after the loading would find the pipelines imported."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run = subprocess.run(
        [sys.executable, "-c", _MODEL_CODE_PROBE, "generate", "--tiny", "--input_json",
         str(EXAMPLES / "two_person_tiny.json"), "--save_file", str(blocker / "video")],
        capture_output=True, text=True, cwd=ROOT, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]", f"model code imported before the error: {run.stdout}"
    assert "Traceback" not in run.stderr
    assert (
        run.stderr.strip()
        == f"multitalk generate: error: --save_file {blocker / 'video.mp4'}: {blocker} is a file, not a folder"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_the_model_code_probe_sees_a_model_load(tmp_path):
    """The probe above can fail: a run that builds the tiny model lists the pipelines' modules."""
    run = subprocess.run(
        [sys.executable, "-c", _MODEL_CODE_PROBE, "generate", "--tiny", "--input_json",
         str(EXAMPLES / "single_tiny.json"), "--save_file", str(tmp_path / "video"), "--mode", "clip",
         "--frame_num", "5", "--sample_steps", "1", "--height", "32", "--width", "32"],
        capture_output=True, text=True, cwd=ROOT, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "diffusers_multitalk.pipelines" in run.stdout.strip().splitlines()[-1], run.stdout


def test_pipeline_errors_name_the_flags():
    from diffusers_multitalk.cli.generate import flag_names

    message = "`motion_frames` must be 4n+1 and smaller than `num_frames` (5) for audio longer than one chunk, got 25."
    assert (
        flag_names(message)
        == "--motion_frame must be 4n+1 and smaller than --frame_num (5) for audio longer than one chunk, got 25."
    )


def test_sigterm_during_the_write_leaves_no_file(tmp_path):
    """SIGTERM while chunks stream into the mp4: the part file is removed, as on Ctrl-C, and the exit is 143."""
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "diffusers_multitalk", "generate", "--tiny", "--input_json",
         str(EXAMPLES / "two_person_tiny.json"), "--save_file", str(out / "video"), "--sample_steps", "1",
         "--frame_num", "21", "--motion_frame", "5", "--height", "64", "--width", "96"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 1800  # a bound only: the loop ends when the part file appears
    while not list(out.glob(".video.mp4.*part")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before its video was being written"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "multitalk generate: terminated"
    assert list(out.iterdir()) == []


def test_help_is_quick_and_quiet():
    """`multitalk --help` imports neither torch nor diffusers (they take seconds) and prints no warning."""
    probe = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom diffusers_multitalk import cli\n"
         "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
         "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert probe.stdout.strip().splitlines()[-1] == "[]", probe.stdout
    assert probe.stderr == ""
    run = multitalk("generate", "--help")
    assert run.returncode == 0 and run.stderr == "" and "--max_frame_num" in run.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe under test matters where permission bits do not apply")
def test_output_probe_is_real_for_root(tmp_path):
    from diffusers_multitalk.runtime import UserError as CLIError
    from diffusers_multitalk.runtime import check_writable

    with pytest.raises(CLIError, match="cannot write in /proc"):
        check_writable(Path("/proc/no_such_folder/video.mp4"), "--save_file")
    check_writable(tmp_path / "new" / "folder" / "video.mp4", "--save_file")
    assert not (tmp_path / "new").exists(), "the check must not create folders"
