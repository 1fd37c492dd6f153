"""Low-VRAM mode (MultiTalk's --num_persistent_param_in_dit): diffusers group offloading of the DiT's blocks.

On the CPU the blocks are offloaded to the CPU and onloaded to the CPU: the hooks run for real (their onloads and
offloads are counted), only the copies are no-ops. The CUDA tests (skipped without a GPU) check where the weights
really are before, during and after a forward.
"""

from __future__ import annotations

import shlex
import types

import numpy as np
import pytest
import torch
from diffusers.hooks.group_offloading import ModuleGroup

from diffusers_multitalk import cli, make_tiny_pipeline, runtime
from diffusers_multitalk.hooks.teacache import TEACACHE_HOOK
from diffusers_multitalk.models.transformer_multitalk import MultiTalkTransformer3DModel
from diffusers_multitalk.pipelines import low_vram
from diffusers_multitalk.pipelines.low_vram import (
    apply_dit_low_vram,
    disable_low_vram,
    enable_low_vram,
    plan_resident_blocks,
    remove_dit_low_vram,
)


SR = 16000
CUDA = torch.cuda.is_available()


def _has_offload_hook(module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook("group_offloading") is not None


def _hooked(transformer) -> list[int]:
    return [i for i, block in enumerate(transformer.blocks) if _has_offload_hook(block)]


@pytest.fixture
def transfers(monkeypatch):
    """Records every onload and offload of a group (the groups themselves)."""
    log = {"onload": [], "offload": []}
    onload, offload = ModuleGroup.onload_, ModuleGroup.offload_

    def counting_onload(self):
        log["onload"].append(self)
        return onload(self)

    def counting_offload(self):
        log["offload"].append(self)
        return offload(self)

    monkeypatch.setattr(ModuleGroup, "onload_", counting_onload)
    monkeypatch.setattr(ModuleGroup, "offload_", counting_offload)
    return log


def block_indices(groups, transformer) -> list[int]:
    """The DiT block each logged group moves (groups of other modules left out)."""
    index = {id(block): i for i, block in enumerate(transformer.blocks)}
    return [index[id(g.modules[0])] for g in groups if len(g.modules) == 1 and id(g.modules[0]) in index]


def tiny_transformer(num_layers: int = 5) -> MultiTalkTransformer3DModel:
    config = dict(make_tiny_pipeline(seed=0).transformer.config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    return MultiTalkTransformer3DModel(**{**config, "num_layers": num_layers}).eval()


def transformer_inputs(transformer, persons: int = 1, seed: int = 0):
    c = transformer.config
    g = torch.Generator().manual_seed(seed)
    frames = 5
    latent_t = (frames - 1) // 4 + 1
    return dict(
        hidden_states=torch.randn(1, c.in_channels, latent_t, 8, 12, generator=g),
        timestep=torch.tensor([700.0]),
        encoder_hidden_states=torch.randn(1, 16, c.text_dim, generator=g),
        encoder_hidden_states_image=torch.randn(1, 257, c.image_dim, generator=g),
        audio_embeds=torch.randn(1, persons, frames, 5, c.audio_layers, c.audio_channels, generator=g),
    )


def speech(seconds, pitch=200.0):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * pitch * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


IMAGE = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)


def generate(pipe, device="cpu", steps=2, mode="streaming", **kwargs):
    """Two persons in streaming mode: three chunks, so the VAE encodes and decodes (the joined latents returned)."""
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        image=IMAGE,
        audio=[(speech(0.8), SR), (speech(0.8, 300.0), SR)],
        audio_type="para",
        prompt="two people talk",
        height=64,
        width=96,
        num_frames=9,
        motion_frames=5,
        max_frames=17,
        mode=mode,
        num_inference_steps=steps,
        output_type="latent",
        generator=torch.Generator(device).manual_seed(0),
        **kwargs,
    ).frames


# ----------------------------------------------------------------------------------------------------------------
# The budget -> resident blocks mapping
# ----------------------------------------------------------------------------------------------------------------
def test_plan_counts_whole_blocks_in_order():
    assert plan_resident_blocks([10, 10, 10], 0) == []
    assert plan_resident_blocks([10, 10, 10], 9) == []
    assert plan_resident_blocks([10, 10, 10], 10) == [0]
    assert plan_resident_blocks([10, 10, 10], 29) == [0, 1]
    assert plan_resident_blocks([10, 10, 10], 10**12) == [0, 1, 2]
    # as MultiTalk's manager: the budget fills in order and stops at the first block that does not fit
    assert plan_resident_blocks([10, 30, 5], 20) == [0]
    with pytest.raises(ValueError, match="0 or more"):
        plan_resident_blocks([10], -1)


@pytest.mark.parametrize("k", [0, 1, 2, 4, 5])
def test_n_params_of_k_blocks_keeps_exactly_k_blocks(k, transfers):
    transformer = tiny_transformer(5)
    inputs = transformer_inputs(transformer)
    with torch.no_grad():
        expected = transformer(**inputs, return_dict=False)[0]
    per_block = sum(p.numel() for p in transformer.blocks[0].parameters())
    budget = k * per_block

    plan = apply_dit_low_vram(transformer, "cpu", budget)
    assert plan.resident_blocks == list(range(k)) and plan.offloaded_blocks == list(range(k, 5))
    assert plan.resident_block_params <= budget
    # every streamed block has its own group and hook; the resident ones have none
    assert _hooked(transformer) == list(range(k, 5))
    assert _has_offload_hook(transformer)  # the top module's hook (moves the inputs, starts the prefetch)
    # registering a hook offloads its block
    assert block_indices(transfers["offload"], transformer) == list(range(k, 5))
    transfers["onload"].clear(), transfers["offload"].clear()

    with torch.no_grad():
        for _ in range(2):
            out = transformer(**inputs, return_dict=False)[0]
            assert torch.equal(out, expected)
    streamed = list(range(k, 5))
    assert block_indices(transfers["onload"], transformer) == streamed * 2
    assert block_indices(transfers["offload"], transformer) == streamed * 2

    # one parameter less than k blocks: k - 1 resident
    remove_dit_low_vram(transformer)
    assert _hooked(transformer) == [] and not _has_offload_hook(transformer)
    if k:
        assert apply_dit_low_vram(transformer, "cpu", budget - 1).resident_blocks == list(range(k - 1))
        assert _hooked(transformer) == list(range(k - 1, 5))
        remove_dit_low_vram(transformer)
    with torch.no_grad():
        assert torch.equal(transformer(**inputs, return_dict=False)[0], expected)


def test_zero_streams_every_block_and_keeps_the_rest(transfers):
    transformer = tiny_transformer(3)
    plan = apply_dit_low_vram(transformer, "cpu", 0)
    assert plan.resident_blocks == [] and plan.offloaded_blocks == [0, 1, 2]
    outside = sum(p.numel() for n, p in transformer.named_parameters() if not n.startswith("blocks."))
    assert plan.non_block_params == outside > 0
    assert "0 of 3 DiT blocks resident" in plan.summary()
    with pytest.raises(ValueError, match="already has group offloading"):
        apply_dit_low_vram(transformer, "cpu", 0)


# ----------------------------------------------------------------------------------------------------------------
# Whole generations: bit-identical latents
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_latents():
    return generate(make_tiny_pipeline(seed=0))


@pytest.mark.parametrize("blocks", [0, 1])
def test_generation_is_bit_identical(reference_latents, blocks):
    pipe = make_tiny_pipeline(seed=0)
    budget = blocks * sum(p.numel() for p in pipe.transformer.blocks[0].parameters())
    plan = enable_low_vram(pipe, "cpu", budget)
    assert plan.resident_blocks == list(range(blocks)) and _hooked(pipe.transformer) == list(range(blocks, 2))
    # the other components are group-offloaded as well
    for name in ("text_encoder", "image_encoder", "vae", "audio_encoder"):
        component = getattr(pipe, name)
        assert any(_has_offload_hook(m) for m in component.modules()), name
        assert plan.components[name].startswith("group offloading")
    assert pipe._execution_device == torch.device("cpu")
    latents = generate(pipe)
    # three streamed chunks, their latents joined along time without the overlap
    assert latents.shape == reference_latents.shape and latents.shape[2] == 5
    assert latents.dtype == torch.float32 and torch.equal(latents, reference_latents)

    disable_low_vram(pipe)
    assert not any(
        _has_offload_hook(m) for c in pipe.components.values() if isinstance(c, torch.nn.Module) for m in c.modules()
    )
    assert torch.equal(generate(pipe), reference_latents)


def test_every_streamed_block_runs_through_its_hook(transfers):
    pipe = make_tiny_pipeline(seed=0)
    enable_low_vram(pipe, "cpu", 0, offload_components=False, text_encoder_on_cpu=True)
    transfers["onload"].clear()
    generate(pipe, mode="clip", steps=2)
    forwards = 2 * 3  # steps x guidance branches (text guidance 5: cond, drop-text, uncond)
    assert block_indices(transfers["onload"], pipe.transformer) == [0, 1] * forwards
    # with offload_components=False nothing else is hooked
    assert not any(_has_offload_hook(m) for m in pipe.vae.modules())


def test_teacache_stays_outside_the_offload_hooks(transfers):
    steps = 8
    plain = make_tiny_pipeline(seed=0)
    plain.transformer.enable_teacache(threshold=1e12)  # only the 5 retention steps of each branch compute
    expected = generate(plain, mode="clip", steps=steps)

    pipe = make_tiny_pipeline(seed=0)
    pipe.transformer.enable_teacache(threshold=1e12)
    enable_low_vram(pipe, "cpu", 0)
    order = pipe.transformer.blocks[0]._diffusers_hook._hook_order
    assert order[-1] == TEACACHE_HOOK and "group_offloading" in order  # TeaCache wraps the offload hook
    transfers["onload"].clear()
    latents = generate(pipe, mode="clip", steps=steps)
    assert torch.equal(latents[0], expected[0])
    onloads = block_indices(transfers["onload"], pipe.transformer).count(1)
    # a skipped step moves no weights: 5 computed steps x 3 branches onload the block, not all 8 x 3 forwards
    assert onloads == 5 * 3


# ----------------------------------------------------------------------------------------------------------------
# The CLI flag
# ----------------------------------------------------------------------------------------------------------------
def parse(command: str):
    return cli.build_parser().parse_args(["generate", *shlex.split(command)])


class _Recorder:
    def __init__(self, real=None):
        self.calls = []
        self.real = real

    def __call__(self, pipe, device, num_persistent_params, **kwargs):
        self.calls.append((pipe, device, num_persistent_params, kwargs))
        if self.real is not None:  # the real thing, onto the CPU (no GPU here)
            return self.real(pipe, "cpu", num_persistent_params, **kwargs)
        return types.SimpleNamespace(summary=lambda: "low VRAM (mocked)")


@pytest.mark.parametrize(
    "flags, offload_components, t5_cpu",
    [("", True, False), ("--offload_model True", True, False), ("--offload_model False --t5_cpu", False, True)],
)
def test_cli_flag_maps_to_enable_low_vram(monkeypatch, capsys, flags, offload_components, t5_cpu):
    recorder = _Recorder()
    monkeypatch.setattr(low_vram, "enable_low_vram", recorder)
    args = parse(f"--tiny --num_persistent_param_in_dit 7000000000 {flags}")
    assert runtime.unsupported_flags(args, environ={}) == []
    runtime.check_generate_args(args)
    pipe = runtime.load_pipeline(args, torch.device("cuda"), torch.float32)
    [(called_pipe, device, n, kwargs)] = recorder.calls
    assert called_pipe is pipe and device == torch.device("cuda") and n == 7_000_000_000
    assert kwargs == {"offload_components": offload_components, "text_encoder_on_cpu": t5_cpu}
    assert "low VRAM (mocked)" in capsys.readouterr().err


def test_cli_flag_installs_the_hooks(monkeypatch):
    monkeypatch.setattr(low_vram, "enable_low_vram", _Recorder(real=enable_low_vram))
    transformer = make_tiny_pipeline(seed=0).transformer
    one_block = sum(p.numel() for p in transformer.blocks[0].parameters())
    pipe = runtime.load_pipeline(
        parse(f"--tiny --num_persistent_param_in_dit {one_block}"), torch.device("cuda"), torch.float32
    )
    assert _hooked(pipe.transformer) == [1]
    assert any(_has_offload_hook(m) for m in pipe.text_encoder.modules())
    pipe = runtime.load_pipeline(
        parse("--tiny --num_persistent_param_in_dit 0 --t5_cpu"), torch.device("cuda"), torch.float32
    )
    assert _hooked(pipe.transformer) == [0, 1]
    assert not any(_has_offload_hook(m) for m in pipe.text_encoder.modules())
    assert pipe.text_encoder.device.type == "cpu"


def test_cli_flag_is_a_noop_on_the_cpu(monkeypatch, capsys):
    recorder = _Recorder()
    monkeypatch.setattr(low_vram, "enable_low_vram", recorder)
    pipe = runtime.load_pipeline(parse("--tiny --num_persistent_param_in_dit 0"), torch.device("cpu"), torch.float32)
    assert recorder.calls == [] and _hooked(pipe.transformer) == []
    assert "num_persistent_param_in_dit: has no effect on the CPU" in capsys.readouterr().err


def test_cli_rejects_a_negative_budget(capsys):
    status = cli.main(["generate", "--tiny", "--input_json", "missing.json", "--num_persistent_param_in_dit", "-1"])
    assert status == 2  # a bad request: argparse's usage status
    assert "--num_persistent_param_in_dit -1: must be 0 or more" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# CUDA: where the weights really are
# ----------------------------------------------------------------------------------------------------------------
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def _devices(module):
    return {p.device.type for p in module.parameters()}


@cuda_only
@pytest.mark.parametrize("use_stream", [True, False])
def test_cuda_blocks_are_onloaded_only_while_they_run(use_stream):
    transformer = tiny_transformer(4)
    inputs = transformer_inputs(transformer)
    with torch.no_grad():
        expected = transformer.to("cuda")(**{k: v.cuda() for k, v in inputs.items()}, return_dict=False)[0]
    transformer.to("cpu")
    per_block = sum(p.numel() for p in transformer.blocks[0].parameters())
    plan = apply_dit_low_vram(transformer, "cuda", per_block, use_stream=use_stream)
    assert plan.resident_blocks == [0] and plan.use_stream == use_stream
    assert _devices(transformer.blocks[0]) == {"cuda"} and _devices(transformer.patch_embedding) == {"cuda"}
    assert all(_devices(transformer.blocks[i]) == {"cpu"} for i in (1, 2, 3))
    if use_stream:
        assert all(p.is_pinned() for p in transformer.blocks[1].parameters())
    seen = []  # the devices of each block's weights while it runs (seen from its first sub-layer)
    handles = [
        block.attn1.register_forward_pre_hook(lambda m, a, i=i, block=block: seen.append((i, _devices(block))))
        for i, block in enumerate(transformer.blocks)
    ]
    with torch.no_grad():
        for _ in range(3):  # the first forward learns the order, the next ones prefetch
            out = transformer(**inputs, return_dict=False)[0]  # CPU inputs: the top hook moves them
            assert out.device.type == "cuda" and torch.equal(out, expected)
    for handle in handles:
        handle.remove()
    assert all(devices == {"cuda"} for _, devices in seen) and len(seen) == 12
    assert all(_devices(transformer.blocks[i]) == {"cpu"} for i in (1, 2, 3))
    remove_dit_low_vram(transformer)
    assert all(_devices(transformer.blocks[i]) == {"cpu"} for i in (1, 2, 3))


@cuda_only
def test_cuda_generation_matches_and_uses_less_memory():
    reference = make_tiny_pipeline(seed=0).to("cuda")
    expected = generate(reference, device="cuda")
    reference.text_encoder.to("cpu")  # umT5 on the CPU computes slightly different prompt states
    expected_t5_cpu = generate(reference, device="cuda")
    del reference
    torch.cuda.empty_cache()

    for kwargs in (dict(), dict(text_encoder_on_cpu=True), dict(offload_components=False), dict(use_stream=False)):
        target = expected_t5_cpu if kwargs.get("text_encoder_on_cpu") else expected
        pipe = make_tiny_pipeline(seed=0)
        plan = enable_low_vram(pipe, "cuda", 0, **kwargs)
        assert pipe._execution_device.type == "cuda", kwargs
        assert all(_devices(block) == {"cpu"} for block in pipe.transformer.blocks)
        if kwargs.get("text_encoder_on_cpu"):
            assert _devices(pipe.text_encoder) == {"cpu"} and plan.components["text_encoder"] == "on the CPU"
        latents = generate(pipe, device="cuda")
        for ours, theirs in zip(latents, target):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5, msg=str(kwargs))
        if kwargs.get("offload_components", True):
            for name in ("image_encoder", "vae", "audio_encoder"):
                assert _devices(getattr(pipe, name)) == {"cpu"}, (name, kwargs)
        disable_low_vram(pipe)


@cuda_only
def test_cuda_teacache_with_low_vram():
    reference = make_tiny_pipeline(seed=0).to("cuda")
    reference.transformer.enable_teacache(threshold=1e12)
    expected = generate(reference, device="cuda", mode="clip", steps=8)
    pipe = make_tiny_pipeline(seed=0)
    pipe.transformer.enable_teacache(threshold=1e12)
    enable_low_vram(pipe, "cuda", 0)
    latents = generate(pipe, device="cuda", mode="clip", steps=8)
    torch.testing.assert_close(latents[0], expected[0], rtol=1e-5, atol=1e-5)
    # a skipped last step leaves at most the first streamed block (prefetched, not run) on the GPU
    assert all(_devices(block) == {"cpu"} for block in pipe.transformer.blocks[1:])


@cuda_only
def test_cuda_peak_memory_follows_the_budget():
    torch.manual_seed(0)
    layers = 8
    config = dict(
        num_attention_heads=8,
        attention_head_dim=128,
        text_dim=64,
        ffn_dim=4096,
        num_layers=layers,
        image_dim=64,
        added_kv_proj_dim=1024,
        audio_layers=2,
        audio_channels=32,
        intermediate_dim=16,
        output_dim=16,
        context_tokens=4,
    )
    transformer = MultiTalkTransformer3DModel(**config).eval()
    inputs = {k: v.cuda() for k, v in transformer_inputs(transformer).items()}
    block_bytes = sum(p.numel() * p.element_size() for p in transformer.blocks[0].parameters())
    per_block = sum(p.numel() for p in transformer.blocks[0].parameters())
    peaks = {}
    for budget in (None, 3 * per_block, 0):
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        if budget is None:
            transformer.to("cuda")
        else:
            apply_dit_low_vram(transformer, "cuda", budget)
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            for _ in range(2):
                transformer(**inputs, return_dict=False)
        torch.cuda.synchronize()
        peaks[budget] = torch.cuda.max_memory_allocated() - base
        if budget is not None:
            remove_dit_low_vram(transformer)
        transformer.to("cpu")
    # k resident blocks plus at most two streamed ones on the device at once (the running one and the prefetched
    # next): the peak drops by (layers - k - 2) blocks from the resident model's, give or take half a block
    for k in (3, 0):
        saved = peaks[None] - peaks[k * per_block]
        assert abs(saved - (layers - k - 2) * block_bytes) < block_bytes / 2, (k, saved / block_bytes)
