"""SoulX-FlashTalk parity harness: runs the reference's own inference (generate_video.py, stream mode) on tiny random
weights on the CPU, for each case of CASES, and writes what it produced to tests/fixtures/flashtalk_fullgen/ (see
the MANIFEST.md there).

    git -C <SoulX-FlashTalk clone> archive HEAD flash_talk generate_video.py | tar -x -C /tmp/flashtalk-ref
    git -C <SoulX-FlashTalk clone> rev-parse HEAD > /tmp/flashtalk-ref/COMMIT
    pip install --target /tmp/refdeps easydict ftfy torchvision==0.28.*   # the reference's imports, not ours
    PYTHONPATH=/tmp/refdeps .venv/bin/python scripts/flashtalk_parity.py --reference /tmp/flashtalk-ref

The tiny folders come from `diffusers_multitalk.testing.write_tiny_flashtalk_folders(seed)` (the reference loads
them as it loads the real download: `WanModel.from_pretrained` on the merged, sharded DiT; Wan's T5/CLIP/VAE `.pth`
files; chinese-wav2vec2-base); the tests rebuild the same folders from the seed. Only what cannot run on a CPU is
replaced, each listed in STUBS below and in the MANIFEST; the reference's sizes are shrunk where its factories fix
them (umT5-XXL, CLIP ViT-H's depth, the VAE's width).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "flashtalk_fullgen"
SEED = 0  # the tiny weights' seed (write_tiny_flashtalk_folders)
PROMPT = "a person is talking to the camera"
# The cases: `params` over the reference's infer_params.yaml (its height/width shrunk: the real 768x448 is 12:7),
# the reference's --base_seed, the source image's size (h x w: resized and centre-cropped by the reference) and the
# seconds of silence before the speech; each has exactly two chunks' audio. Stored as frames / frames_<name>.
CASES = {
    "": dict(params=dict(height=64, width=32), base_seed=4242, image_size=(80, 48), image_seed=7, silence=0.0),
    "other": dict(
        params=dict(height=32, width=16, sample_steps=2, motion_frames_num=9, color_correction_strength=0.5),
        base_seed=7, image_size=(40, 120), image_seed=3, silence=0.5,
    ),
}  # fmt: skip


def slice_samples(params: dict) -> int:
    """One chunk's new audio: (frame_num - motion_frames_num) frames at 16 kHz."""
    return (params.get("frame_num", 33) - params.get("motion_frames_num", 5)) * 16000 // 25


STUBS = [
    "torch.cuda.current_device / synchronize: 'cpu' / no-op (t5.py evaluates current_device() at import)",
    "flash_attention (flash-attn 2/3, CUDA only) -> exact float32 SDPA with the same key-length mask",
    "xformers.ops.memory_efficient_attention -> SDPA (same [B, M, H, K] layout, no bias: one person)",
    "xfuser.core.distributed: an empty module (only its sequence-parallel paths call it; world size 1)",
    "transformers 5: the reference's Wav2Vec2Model.forward wrapped in transformers' own capture_outputs (its encoder "
    "no longer returns hidden_states by itself; the fixtures of ../shared/parity used transformers 4.49 instead)",
    "torchvision: its pure-Python transforms loaded without its C extension (none built for this torch)",
    "inference.get_device -> 'cpu'; COMPILE_MODEL / COMPILE_VAE = False (torch.compile is a speed-up only)",
    "multitalk_14B: param_dtype, t5_dtype, clip_dtype = float32 (the released run is bf16/fp16)",
    "factories shrunk to the tiny weights: umt5_xxl, clip_xlm_roberta_vit_h_14, _video_vae (their cfg only)",
]


def _sdpa_flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                          causal=False, window_size=(-1, -1), deterministic=False, dtype=None, version=None):  # fmt: skip
    """flash_attention's contract ([B, L, N, C] in and out; keys past `k_lens` masked) in exact float32 SDPA."""
    mask = None
    if k_lens is not None:
        mask = torch.arange(k.shape[1])[None, :] < k_lens.to("cpu")[:, None]  # [B, Lk]
        mask = mask[:, None, None, :]
    if q_scale is not None:
        q = q * q_scale
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float(), attn_mask=mask,
        is_causal=causal, scale=softmax_scale,
    )  # fmt: skip
    return out.transpose(1, 2).to(q.dtype)


def _install_stubs() -> None:
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None
    xfuser = types.ModuleType("xfuser")
    core = types.ModuleType("xfuser.core")
    distributed = types.ModuleType("xfuser.core.distributed")
    for name in ("get_sequence_parallel_rank", "get_sequence_parallel_world_size", "get_sp_group", "get_world_group"):
        setattr(distributed, name, lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no sequence parallelism")))
    xfuser.core, core.distributed = core, distributed
    sys.modules.update({"xfuser": xfuser, "xfuser.core": core, "xfuser.core.distributed": distributed})
    xformers = types.ModuleType("xformers")
    ops = types.ModuleType("xformers.ops")

    def memory_efficient_attention(q, k, v, attn_bias=None, op=None):
        assert attn_bias is None
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    ops.memory_efficient_attention = memory_efficient_attention
    xformers.ops = ops
    sys.modules.update({"xformers": xformers, "xformers.ops": ops})
    spec = importlib.util.find_spec("torchvision")
    shim = types.ModuleType("torchvision")
    shim.__path__, shim.__spec__ = list(spec.submodule_search_locations), spec
    sys.modules["torchvision"] = shim


def _shrink_factories(components) -> None:
    """The reference's model factories, at the tiny weights' sizes (read from the tiny components)."""
    import functools

    from flash_talk.infinite_talk.modules import multitalk_model
    from flash_talk.src.pipeline import flash_talk_pipeline
    from flash_talk.wan.modules import attention, clip, t5, vae

    t5c = components["text_encoder"].config
    t5.umt5_xxl = functools.partial(
        t5._t5, "umt5-xxl", vocab_size=t5c.vocab_size, dim=t5c.d_model, dim_attn=t5c.num_heads * t5c.d_kv,
        dim_ffn=t5c.d_ff, num_heads=t5c.num_heads, encoder_layers=t5c.num_layers, decoder_layers=t5c.num_layers,
        num_buckets=t5c.relative_attention_num_buckets, shared_pos=False, dropout=0.0,
    )  # fmt: skip
    vc = components["image_encoder"].config
    shrink_clip = dict(
        embed_dim=32, vision_dim=vc.hidden_size, vision_mlp_ratio=vc.intermediate_size / vc.hidden_size,
        vision_heads=vc.num_attention_heads, vision_layers=vc.num_hidden_layers, vocab_size=64, max_text_len=16,
        text_dim=32, text_heads=2, text_layers=1, text_dropout=0.0,
    )  # fmt: skip
    original_clip = clip.clip_xlm_roberta_vit_h_14
    clip.clip_xlm_roberta_vit_h_14 = lambda **kwargs: original_clip(**{**kwargs, **shrink_clip})
    vae_cfg = components["vae"].config
    original_vae = vae._video_vae
    vae._video_vae = lambda **kwargs: original_vae(
        **kwargs, dim=vae_cfg.base_dim, num_res_blocks=vae_cfg.num_res_blocks
    )
    from flash_talk.infinite_talk.audio_analysis import wav2vec2
    from transformers.utils.output_capturing import capture_outputs

    wav2vec2.Wav2Vec2Model.forward = capture_outputs(tie_last_hidden_states=False)(wav2vec2.Wav2Vec2Model.forward)
    for module in (attention, multitalk_model, clip):
        module.flash_attention = _sdpa_flash_attention
    flash_talk_pipeline.COMPILE_MODEL = flash_talk_pipeline.COMPILE_VAE = False


def _write_inputs(folder: Path, name: str, case: dict) -> tuple[Path, Path]:
    """A smooth random image (another size and aspect than the target: resized and cropped) and a voiced 16 kHz
    mono wav (PCM 16) of exactly two chunks' audio, `silence` seconds of it silent first."""
    import soundfile
    from PIL import Image

    rng = np.random.RandomState(case["image_seed"])
    small = rng.rand(5, 3, 3) * 255
    image = Image.fromarray(small.astype(np.uint8)).resize(case["image_size"][::-1], Image.BICUBIC)
    suffix = f"_{name}" if name else ""
    image_path = folder / f"image{suffix}.png"
    image.save(image_path)
    t = np.arange(2 * slice_samples(case["params"])) / 16000
    pitch = 140 + 40 * np.sin(2 * np.pi * 1.3 * t)
    wave = np.sin(2 * np.pi * np.cumsum(pitch) / 16000) * (0.2 + 0.15 * np.sin(2 * np.pi * 3.1 * t))
    wave += 0.02 * rng.randn(len(t))
    wave[: int(case["silence"] * 16000)] = 0.0
    audio_path = folder / f"speech{suffix}.wav"
    soundfile.write(audio_path, wave.astype(np.float32), 16000, subtype="PCM_16")
    return image_path, audio_path


def run_reference(reference: Path, folders: dict, image: Path, audio: Path, case: dict, chunks: int | None = None):
    """generate_video.generate(args) of the reference, stream mode, with `case`'s settings; returns the frames it
    would save ([F, H, W, 3] float32 in [0, 255], the chunks concatenated) and the per-chunk frame counts. `chunks`:
    the first chunks' audio only."""
    os.chdir(reference)  # inference.py reads flash_talk/configs/infer_params.yaml relative to the checkout
    import generate_video
    import yaml
    from flash_talk import inference
    from flash_talk.infinite_talk.configs import multitalk_14B

    for name in ("param_dtype", "t5_dtype", "clip_dtype"):
        multitalk_14B[name] = torch.float32
    inference.get_device = lambda ulysses_degree, ring_degree: "cpu"
    with open("flash_talk/configs/infer_params.yaml") as f:
        inference.infer_params.clear()
        inference.infer_params.update(yaml.safe_load(f), **case["params"])
    inference.target_size = (inference.infer_params["height"], inference.infer_params["width"])
    audio_path = audio
    if chunks is not None:
        import soundfile

        wave, rate = soundfile.read(audio, dtype="int16")
        audio_path = Path(folders["flashtalk_dir"]).parent / f"speech_{chunks}.wav"
        soundfile.write(audio_path, wave[: chunks * slice_samples(case["params"])], rate, subtype="PCM_16")
    captured = {}
    generate_video.save_video = lambda frames_list, video_path, audio_path, fps: captured.update(chunks=frames_list)
    args = argparse.Namespace(
        ckpt_dir=str(folders["flashtalk_dir"]), wav2vec_dir=str(folders["wav2vec_dir"]), save_file="unused.mp4",
        base_seed=case["base_seed"], input_prompt=PROMPT, cond_image=str(image), audio_path=str(audio_path),
        audio_encode_mode="stream", cpu_offload=False,
    )  # fmt: skip
    generate_video.generate(args)
    return torch.cat(captured["chunks"]).float().numpy(), [len(c) for c in captured["chunks"]]


def run_case(reference: Path, folders: dict, out: Path, name: str, case: dict) -> tuple[np.ndarray, dict]:
    """Two chunks, one chunk (must equal the first) and two chunks again (must be bit-identical)."""
    image, audio = _write_inputs(out, name, case)
    two, counts = run_reference(reference, folders, image, audio, case)
    one, _ = run_reference(reference, folders, image, audio, case, chunks=1)
    rerun, _ = run_reference(reference, folders, image, audio, case)
    return two, dict(
        settings={k: v for k, v in case.items() if k != "image_seed"}, chunk_frames=counts,
        one_chunk_equals_first_chunk=bool(np.array_equal(one, two[: len(one)])),
        rerun_max_abs_diff=float(np.abs(rerun - two).max()), frames_shape=list(two.shape), frames_std=float(two.std()),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of Soul-AILab/SoulX-FlashTalk")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out = args.out.resolve()
    sys.path.insert(0, str(ROOT / "src"))
    import diffusers  # noqa: F401 - imported (and their optional packages probed) before the stubs go in
    import transformers  # noqa: F401
    from safetensors.torch import save_file

    from diffusers_multitalk.testing import write_tiny_flashtalk_folders
    from diffusers_multitalk.tiny import make_tiny_components

    _install_stubs()
    sys.path.insert(0, str(args.reference.resolve()))

    args.out.mkdir(parents=True, exist_ok=True)
    outputs, report = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_tiny_flashtalk_folders(tmp, seed=SEED)
        _shrink_factories(make_tiny_components(SEED, reference_widths=True))
        for name, case in CASES.items():
            frames, report[name or "main"] = run_case(args.reference, folders, args.out, name, case)
            outputs[f"frames_{name}" if name else "frames"] = torch.from_numpy(frames).contiguous()
    save_file(outputs, str(args.out / "outputs.safetensors"))
    commit = subprocess.run(
        ["git", "-C", str(args.reference), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if not commit and (args.reference / "COMMIT").is_file():  # a `git archive` export: its commit written beside it
        commit = (args.reference / "COMMIT").read_text().strip()
    report = dict(reference_commit=commit or "(not a git checkout: see the MANIFEST)", cases=report, stubs=STUBS)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
