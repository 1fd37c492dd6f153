"""Live video while it generates (issue 25, part 3): the HLS stream `live_dir=` writes beside the mp4 — an EVENT
playlist that grows by one segment per decoded chunk (checked from the step callback while the call runs), segments
ffmpeg decodes with their audio, the same frames as the mp4, the mp4 itself unchanged, and no stream left behind by
an error; for MultiTalk, InfiniteTalk and SoulX-FlashTalk on the tiny random pipelines (CPU)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from diffusers_multitalk import make_tiny_pipeline
from diffusers_multitalk.pipelines.live_stream import PLAYLIST_NAME, LiveStream, segment_name
from diffusers_multitalk.pipelines.pipeline_wan_flashtalk import WanFlashTalkPipeline
from diffusers_multitalk.pipelines.pipeline_wan_infinitetalk import WanInfiniteTalkPipeline
from diffusers_multitalk.pipelines.pipeline_wan_multitalk import WanMultiTalkPipeline
from diffusers_multitalk.pipelines.video_io import get_ffmpeg_exe
from diffusers_multitalk.testing import stream_seconds


SR = 16000
HEIGHT, WIDTH = 32, 48
# 9-frame chunks continuing from 5: 0.6 s of speech (15 frames) is 3 chunks (9 + 4 + 4 new frames) for MultiTalk and
# InfiniteTalk, 4 for FlashTalk (which drops the 5 from every chunk, the first too).
SMALL = dict(height=HEIGHT, width=WIDTH, num_frames=9, motion_frames=5, num_inference_steps=1)
CLASSES = [WanMultiTalkPipeline, WanInfiniteTalkPipeline, WanFlashTalkPipeline]


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + np.random.RandomState(seed).rand())
    return (0.3 * np.sin(2 * np.pi * 180 * t) * envelope).astype(np.float32)


def decode(path, height=HEIGHT, width=WIDTH) -> np.ndarray:
    """A video file's frames `[F, H, W, 3]` uint8, as ffmpeg decodes them."""
    raw = subprocess.run(
        [get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def playlist_segments(folder) -> tuple[list[str], bool]:
    """(the playlist's segment names, whether it is ended)."""
    lines = (folder / PLAYLIST_NAME).read_text().splitlines()
    assert lines[0] == "#EXTM3U" and "#EXT-X-PLAYLIST-TYPE:EVENT" in lines
    return [line for line in lines if line and not line.startswith("#")], lines[-1] == "#EXT-X-ENDLIST"


@pytest.fixture(scope="module", params=CLASSES, ids=lambda c: c.__name__)
def pipe(request):
    pipe = make_tiny_pipeline(seed=0, pipeline_class=request.param)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def image():
    return (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)


def run(pipe, image, seed=0, **kwargs):
    return pipe(image=image, audio=[(speech(0.6), SR)], prompt="a person talks", **SMALL,
                generator=torch.Generator().manual_seed(seed), **kwargs)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# the pipelines
# ----------------------------------------------------------------------------------------------------------------------
def test_the_playlist_grows_by_a_segment_per_chunk_while_the_call_runs(pipe, image, tmp_path):
    live = tmp_path / "live"
    seen = []  # at each chunk's (one) step: the segments listed then, and whether the first one decodes

    def step_end(pipeline, index, timestep, callback_kwargs):
        if not (live / PLAYLIST_NAME).exists():
            seen.append((index, 0, False))
            return callback_kwargs
        names, ended = playlist_segments(live)
        assert not ended, "the playlist is ended only when the call returns"
        seen.append((index, len(names), len(decode(live / names[0])) > 0))
        return callback_kwargs

    out = run(pipe, image, output_path=tmp_path / "talk.mp4", live_dir=live, callback_on_step_end=step_end)
    assert len(seen) >= 3, "expected 3+ chunks"
    # step i (chunk i's only step) runs once chunks 0..i-1 are decoded: i segments, the first decodable
    assert seen == [(i, i, i > 0) for i in range(len(seen))]
    names, ended = playlist_segments(live)
    assert ended and names == [segment_name(i) for i in range(len(seen))]
    final = decode(out.video_path)
    segments = [decode(live / name) for name in names]
    assert sum(len(s) for s in segments) == len(final) == 15
    assert len(decode(live / PLAYLIST_NAME)) == 15  # a player (ffmpeg's HLS demuxer) reads the playlist whole
    for name in names:  # each segment carries its own frames' audio
        assert stream_seconds(live / name, "a") > 0
    # the same frames as the mp4, up to H.264 (the two are encoded separately)
    assert np.abs(np.concatenate(segments).astype(np.float32) - final).mean() < 8


def test_the_mp4_is_the_same_file_with_and_without_live_output(pipe, image, tmp_path):
    run(pipe, image, output_path=tmp_path / "plain.mp4")
    run(pipe, image, output_path=tmp_path / "live.mp4", live_dir=tmp_path / "stream")
    assert (tmp_path / "plain.mp4").read_bytes() == (tmp_path / "live.mp4").read_bytes()


def test_an_error_leaves_no_live_stream(pipe, image, tmp_path, monkeypatch):
    original, calls = pipe.decode_latents, []

    def fail_on_the_second_chunk(latents):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("decoder broke")
        return original(latents)

    monkeypatch.setattr(pipe, "decode_latents", fail_on_the_second_chunk)
    with pytest.raises(RuntimeError, match="decoder broke"):
        run(pipe, image, output_path=tmp_path / "talk.mp4", live_dir=tmp_path / "live")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_call_ends_the_stream_with_its_chunks(image, tmp_path):
    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)

    def stop_at_the_second_chunk(pipeline, index, timestep, callback_kwargs):
        pipeline._interrupt = index == 1
        return callback_kwargs

    out = run(pipe, image, output_path=tmp_path / "talk.mp4", live_dir=tmp_path / "live",
              callback_on_step_end=stop_at_the_second_chunk)  # fmt: skip
    names, ended = playlist_segments(tmp_path / "live")
    assert ended and len(names) == 2
    assert sum(len(decode(tmp_path / "live" / n)) for n in names) == len(decode(out.video_path)) == 9 + 4


def test_live_dir_is_refused_where_it_cannot_stream(image, tmp_path):
    pipe = make_tiny_pipeline(seed=0)
    with pytest.raises(ValueError, match="live_dir"):
        run(pipe, image, output_type="latent", live_dir=tmp_path / "live")
    with pytest.raises(ValueError, match="live_dir"):
        run(pipe, image, num_videos_per_prompt=2, live_dir=tmp_path / "live")
    assert not (tmp_path / "live").exists()


def test_frames_without_an_mp4_are_kept_and_streamed(image, tmp_path):
    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    out = run(pipe, image, live_dir=tmp_path / "live")
    names, ended = playlist_segments(tmp_path / "live")
    assert ended and out.frames.shape[1] == sum(len(decode(tmp_path / "live" / n)) for n in names) == 15


# ----------------------------------------------------------------------------------------------------------------------
# the stream itself
# ----------------------------------------------------------------------------------------------------------------------
def test_stream_playlist_and_cleanup(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("not the stream's")
    (folder / segment_name(7)).write_bytes(b"an old run's")
    stream = LiveStream(folder, fps=25, audio=speech(1.0), sample_rate=SR, max_segment_seconds=0.5)
    assert not (folder / segment_name(7)).exists() and not (folder / PLAYLIST_NAME).exists()
    frames = np.random.RandomState(0).rand(10, 31, 47, 3).astype(np.float32)  # odd sizes are padded
    stream.write(frames)
    stream.write(frames[:6])
    text = (folder / PLAYLIST_NAME).read_text()
    assert "#EXT-X-TARGETDURATION:1" in text and "#EXTINF:0.400000," in text and "#EXTINF:0.240000," in text
    assert "#EXT-X-ENDLIST" not in text
    assert [len(decode(folder / segment_name(i), 32, 48)) for i in range(2)] == [10, 6]
    assert stream_seconds(folder / segment_name(1), "a") == pytest.approx(0.24, abs=0.05)
    stream.abort()
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]  # the folder was there before: kept

    silent = LiveStream(tmp_path / "new", fps=25)
    silent.write(frames[:4])
    silent.close()
    assert playlist_segments(tmp_path / "new") == ([segment_name(0)], True)
    with pytest.raises(ValueError):
        stream_seconds(tmp_path / "new" / segment_name(0), "a")
    made = LiveStream(tmp_path / "made", fps=25)
    made.write(frames[:4])
    made.abort()
    assert not (tmp_path / "made").exists()


# ----------------------------------------------------------------------------------------------------------------------
# multitalk generate --live DIR
# ----------------------------------------------------------------------------------------------------------------------
def test_cli_live_writes_the_stream_beside_the_mp4(tmp_path, capsys):
    from pathlib import Path

    from diffusers_multitalk.cli import main

    examples = Path(__file__).resolve().parents[1] / "examples"
    flags = ["generate", "--tiny", "--input_json", str(examples / "single_tiny.json"), "--frame_num", "9",
             "--motion_frame", "5", "--max_frame_num", "17", "--sample_steps", "1", "--height", "32", "--width", "48",
             "--device", "cpu", "--save_file", str(tmp_path / "talk")]  # fmt: skip
    assert main([*flags, "--live", str(tmp_path / "live")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "talk.mp4")
    names, ended = playlist_segments(tmp_path / "live")
    assert ended and len(names) == 3  # 9 + 4 + 4 frames
    assert sum(len(decode(tmp_path / "live" / n)) for n in names) == len(decode(tmp_path / "talk.mp4")) == 17

    (tmp_path / "a_file").write_text("")
    assert main([*flags, "--live", str(tmp_path / "a_file")]) == 2
    assert "--live" in capsys.readouterr().err
    assert main([*flags, "--live", str(tmp_path / "live2"), "--scene_seg"]) == 2
    assert "--scene_seg" in capsys.readouterr().err


def test_a_failing_stream_is_dropped_and_the_video_goes_on(image, tmp_path, monkeypatch, caplog):
    from diffusers.utils import logging as diffusers_logging

    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    original, calls = LiveStream.write, []

    def fail_on_the_second_segment(self, frames):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return original(self, frames)

    monkeypatch.setattr(LiveStream, "write", fail_on_the_second_segment)
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            out = run(pipe, image, output_path=tmp_path / "talk.mp4", live_dir=tmp_path / "live")
    finally:
        diffusers_logging.disable_propagation()
    assert "live stream" in caplog.text and "disk full" in caplog.text
    assert not (tmp_path / "live").exists() and len(decode(out.video_path)) == 15
    assert len(calls) == 2  # no segment tried after the failure
