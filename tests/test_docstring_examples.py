"""The pipelines' `Examples:` blocks run as written, on the tiny model: `from_pretrained` of the original releases
returns the tiny pipeline, and each call is made small (64x96, 5-frame chunks, 1 step) so that it runs on a CPU."""

import functools
import os
import re
from pathlib import Path

import pytest

from diffusers_multitalk import WanFlashTalkPipeline, WanInfiniteTalkPipeline, WanMultiTalkPipeline, make_tiny_pipeline
from diffusers_multitalk.pipelines import pipeline_wan_flashtalk, pipeline_wan_infinitetalk, pipeline_wan_multitalk


REPO = Path(__file__).resolve().parents[1]
SMALL = dict(height=64, width=96, num_frames=5, motion_frames=1, num_inference_steps=1, allow_upscale=True)


def example_code(docstring: str) -> str:
    """The Python of a diffusers `Examples:` block: the `>>> ` and `... ` lines, prompts stripped."""
    lines = [line.strip() for line in docstring.splitlines()]
    return "\n".join(line[4:] for line in lines if line.startswith((">>> ", "... ")) or line in (">>>", "..."))


@pytest.mark.parametrize(
    "cls, module",
    [
        (WanMultiTalkPipeline, pipeline_wan_multitalk),
        (WanInfiniteTalkPipeline, pipeline_wan_infinitetalk),
        (WanFlashTalkPipeline, pipeline_wan_flashtalk),
    ],
    ids=["multitalk", "infinitetalk", "flashtalk"],
)
def test_example_runs_on_the_tiny_model(cls, module, tmp_path, monkeypatch):
    code = example_code(module.EXAMPLE_DOC_STRING)
    assert "from_pretrained(" in code and "pipe(" in code
    tiny = make_tiny_pipeline(seed=0, pipeline_class=cls)
    tiny.set_progress_bar_config(disable=True)
    calls = []
    monkeypatch.setattr(cls, "from_pretrained", classmethod(lambda c, *a, **k: calls.append((a, k)) or tiny))
    original_call = cls.__call__

    @functools.wraps(original_call)
    def small_call(self, *args, **kwargs):
        kwargs.update(SMALL, mode="clip")
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", small_call)
    monkeypatch.chdir(tmp_path)
    os.symlink(REPO / "examples", tmp_path / "examples")
    namespace = {}
    exec(compile(code, f"<{cls.__name__} example>", "exec"), namespace)
    assert calls and calls[0][1].get("dtype") is not None  # the example loads with dtype=, not torch_dtype=
    written = [p for p in tmp_path.iterdir() if p.suffix == ".mp4"]
    assert len(written) == 1 and written[0].stat().st_size > 0
    assert re.search(r"\bguidance_scale=", code)
