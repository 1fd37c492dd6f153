"""Any flow-matching scheduler of diffusers drives the chunk loop; the others are refused with the reason."""

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from diffusers_multitalk import WanInfiniteTalkPipeline, make_tiny_pipeline
from diffusers_multitalk.pipelines.sampling import make_multitalk_scheduler, set_chunk_timesteps


SR = 16000


def _speech(seconds):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def pipe():
    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, scheduler, steps=4, seconds=0.5, **kwargs):
    pipe.scheduler = scheduler
    try:
        return pipe(
            image=(np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8),
            audio=[(_speech(seconds), SR)],
            prompt="a person talks",
            height=64,
            width=96,
            num_frames=9,
            motion_frames=5,
            num_inference_steps=steps,
            guidance_scale=1.0,
            audio_guidance_scale=2.0,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        ).frames
    finally:
        pipe.scheduler = make_multitalk_scheduler()


UNIPC = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
FLOW_SCHEDULERS = {
    "unipc": lambda: UniPCMultistepScheduler(**UNIPC),
    "dpm++": lambda: DPMSolverMultistepScheduler(**UNIPC),
    "heun": lambda: FlowMatchHeunDiscreteScheduler(shift=5.0),
}


@pytest.mark.parametrize("name", list(FLOW_SCHEDULERS))
def test_flow_schedulers_run_every_chunk(pipe, name):
    euler = _latents(pipe, make_multitalk_scheduler(shift=5.0), seconds=0.9)  # 3 chunks of 9 frames
    other = _latents(pipe, FLOW_SCHEDULERS[name](), seconds=0.9)
    assert other.shape == euler.shape and torch.isfinite(other).all()
    assert not torch.allclose(other, euler)  # another solver: not the same numbers


def test_the_schedulers_own_shift_is_used_when_the_call_gives_none(pipe):
    shift1 = _latents(pipe, FlowMatchEulerDiscreteScheduler(shift=1.0))
    shift11 = _latents(pipe, FlowMatchEulerDiscreteScheduler(shift=11.0))
    assert not torch.allclose(shift1, shift11)
    torch.testing.assert_close(_latents(pipe, FlowMatchEulerDiscreteScheduler(shift=1.0), shift=11.0), shift11)
    # UniPC's own flow_shift, and the call's shift for UniPC: its config comes back unchanged
    unipc = UniPCMultistepScheduler(**UNIPC)
    torch.testing.assert_close(_latents(pipe, UniPCMultistepScheduler(**{**UNIPC, "flow_shift": 9.0})),
                               _latents(pipe, unipc, shift=9.0))  # fmt: skip
    assert unipc.config.flow_shift == 5.0


def test_the_built_scheduler_carries_multitalks_shift():
    scheduler = make_multitalk_scheduler()
    assert scheduler.config.shift == 7.0 and scheduler.shift == 7.0
    set_chunk_timesteps(scheduler, 8)
    assert scheduler.shift == 7.0  # the exact schedule is loaded with shift 1, then its own shift comes back
    set_chunk_timesteps(scheduler, 8, shift=3.0)
    assert scheduler.shift == 7.0


def test_heun_noise_levels_follow_its_second_order_steps(pipe):
    # Heun takes 2n-1 model evaluations for n steps: the callback sees each of them
    steps = []
    pipe.scheduler = FlowMatchHeunDiscreteScheduler(shift=5.0)
    try:
        pipe(image=(np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8), audio=[(_speech(0.3), SR)],
             prompt="a person talks", height=64, width=96, num_frames=5, mode="clip", num_inference_steps=3,
             guidance_scale=1.0, output_type="latent",
             callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw)  # fmt: skip
    finally:
        pipe.scheduler = make_multitalk_scheduler()
    assert steps == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "scheduler, message",
    [
        (DDIMScheduler(), "not a flow-matching scheduler"),
        (UniPCMultistepScheduler(), "not a flow-matching scheduler"),
        (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), "use_dynamic_shifting"),
    ],
)
def test_other_schedulers_are_refused_before_anything_runs(pipe, scheduler, message, monkeypatch):
    monkeypatch.setattr(pipe, "encode_audio", lambda *a, **k: pytest.fail("the audio encoder ran"))
    with pytest.raises((TypeError, ValueError), match=message):
        _latents(pipe, scheduler)


def test_infinitetalk_takes_unipc_too():
    pipe = make_tiny_pipeline(seed=0, pipeline_class=WanInfiniteTalkPipeline)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = UniPCMultistepScheduler(**UNIPC)
    frame = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)
    latents = pipe(video=[frame] * 4, audio=[(_speech(0.9), SR)], prompt="a person talks", height=64, width=96,
                   num_frames=9, motion_frames=5, num_inference_steps=3, guidance_scale=1.0,
                   output_type="latent").frames  # fmt: skip
    assert torch.isfinite(latents).all()
