"""Times MultiTalkTransformer3DModel forwards at full size with random bf16 weights.

Default: the 14B config (dim 5120, 40 layers, 40 heads), 81 frames at 640x640 (21 latent frames of 80x80 ->
33,600 tokens), 1 and 2 persons, several attention set-ups. Prints a markdown table last and, with --out, writes it
and a JSON file there.

    python benchmarks/bench_transformer.py --setups sdpa,cudnn+compile --out docs/

FLOPs counted (multiply-add = 2): every linear layer of the blocks (self-attention q/k/v/o, cross-attention q/o and
k/v over the 512 text + 257 image tokens, audio q/o and k/v over the audio tokens, FFN), the attention products
(QK^T and PV: 4*S*S_kv*dim for self, text/image and audio attention; for several persons also the person map's
attention of all tokens to the first frame's tokens), the patch embedding and the output projection. Elementwise
work (norms, RoPE, modulation) is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffusers_multitalk.models.transformer_multitalk import MultiTalkTransformer3DModel  # noqa: E402
from diffusers_multitalk.testing import column_person_masks  # noqa: E402


FULL_CONFIG = dict(
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=36,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    image_dim=1280,
    added_kv_proj_dim=5120,
)


def forward_flops(config, latent_frames, latent_h, latent_w, persons, text_len=512, image_len=257):
    d = config["num_attention_heads"] * config["attention_head_dim"]
    ffn = config["ffn_dim"]
    s = latent_frames * (latent_h // 2) * (latent_w // 2)
    s0 = s // latent_frames
    audio_tokens = persons * 32
    per_block = 2 * s * (4 * d * d + 2 * d * d + 2 * d * ffn + 2 * d * d)  # token-wise linears
    per_block += 2 * (text_len + image_len) * 2 * d * d  # cross-attention k/v
    per_block += 2 * latent_frames * audio_tokens * 768 * 2 * d  # audio k/v
    per_block += 4 * s * s * d  # self-attention
    per_block += 4 * s * (text_len + image_len) * d  # text + image attention
    per_block += 4 * s * audio_tokens * d  # audio attention (per frame)
    if persons > 1:
        per_block += 4 * s * s0 * d  # person map
    total = config["num_layers"] * per_block
    total += 2 * s * d * config["in_channels"] * 4 + 2 * s * d * config["out_channels"] * 4  # patch embed + head
    return total


def build_model(config, device):
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = MultiTalkTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(torch.float32)
    # Keep the modules diffusers keeps in float32 (modulation tables, norms, time embedder) in float32.
    for name, module in model.named_modules():
        if any(part in name.split(".") for part in model._keep_in_fp32_modules):
            module.to(torch.float32)
    model.scale_shift_table.data = model.scale_shift_table.data.float()
    for block in model.blocks:
        block.scale_shift_table.data = block.scale_shift_table.data.float()
    return model.eval().requires_grad_(False)


def make_inputs(persons, frames, height, width, device):
    latent_t, latent_h, latent_w = (frames - 1) // 4 + 1, height // 8, width // 8
    g = torch.Generator(device=device).manual_seed(0)
    bf16 = dict(device=device, dtype=torch.bfloat16)
    masks = column_person_masks(persons, latent_h, latent_w, device=device)
    return dict(
        hidden_states=torch.randn(1, 36, latent_t, latent_h, latent_w, generator=g, **bf16),
        timestep=torch.tensor([900.0], device=device),
        encoder_hidden_states=torch.randn(1, 512, 4096, generator=g, **bf16),
        encoder_hidden_states_image=torch.randn(1, 257, 1280, generator=g, **bf16),
        audio_embeds=torch.randn(1, persons, frames, 5, 12, 768, generator=g, **bf16),
        ref_target_masks=masks if persons > 1 else None,
    ), (latent_t, latent_h, latent_w)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device, n=8192, repeats=20):
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def write_report(lines: list[str], out: str | None) -> None:
    """Prints a markdown report (last, so a log's tail holds it) and writes it to `out` when given."""
    text = "\n".join(lines)
    if out:
        Path(out).write_text(text + "\n")
    print(text)


def time_forward(model, inputs, warmup, repeats):
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            sync(inputs["hidden_states"].device)
            start = time.perf_counter()
            out = model(**inputs, return_dict=False)[0]
            sync(inputs["hidden_states"].device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    assert out.shape[1] == 16
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--persons", default="1,2")
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument(
        "--setups",
        default="sdpa,cudnn,cudnn+compile",
        help="comma list of BACKEND[+compile][+fused] (BACKEND: sdpa, cudnn, cudnnself = cuDNN for the self-attention "
        "only, flash, flash3 = FlashAttention-3 everywhere, flash3self = FlashAttention-3 for the self-attention only; give it a process of its own "
        "when compiling, so that no block compiled for another backend is reused); compile and fused stay on for later setups",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dim-scale", type=int, default=1, help="divide widths by this (smoke tests only)")
    args = parser.parse_args()

    device = args.device
    on_cuda = torch.device(device).type == "cuda"
    config = dict(FULL_CONFIG, num_layers=args.layers)
    if args.dim_scale > 1:
        config.update(
            num_attention_heads=40 // args.dim_scale,
            ffn_dim=13824 // args.dim_scale,
            added_kv_proj_dim=5120 // args.dim_scale,
        )
    peak_rate = matmul_rate(device, n=8192 if on_cuda else 512)
    model = build_model(config, device)
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    rows, compiled, fused = [], False, False
    for setup in args.setups.split(","):
        options = setup.split("+")
        if options[0] in ("cudnnself", "flash3self"):  # a kernel for the video self-attention only, SDPA elsewhere
            model.set_attention_backend("native")
            for block in model.blocks:
                block.attn1.set_attention_backend({"cudnnself": "_native_cudnn", "flash3self": "_flash_3"}[options[0]])
        else:
            model.set_attention_backend(
                {"sdpa": "native", "cudnn": "_native_cudnn", "flash": "flash", "flash3": "_flash_3"}[options[0]]
            )
        if "fused" in options and not fused:
            model.fuse_qkv_projections()
            fused = True
        if "compile" in options and not compiled:
            model.compile_repeated_blocks(fullgraph=False)
            compiled = True
        for persons in [int(p) for p in args.persons.split(",")]:
            inputs, (lt, lh, lw) = make_inputs(persons, args.frames, args.height, args.width, device)
            if on_cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            times = time_forward(model, inputs, args.warmup, args.repeats)
            median = statistics.median(times)
            flops = forward_flops(config, lt, lh, lw, persons)
            rows.append(
                dict(
                    setup=setup,
                    persons=persons,
                    tokens=lt * lh * lw // 4,
                    seconds=median,
                    all_seconds=times,
                    tflop=flops / 1e12,
                    tflops_per_s=flops / median / 1e12,
                    utilisation=flops / median / peak_rate,
                    peak_gb=torch.cuda.max_memory_allocated() / 1e9 if on_cuda else float("nan"),
                )
            )
            print(json.dumps(rows[-1]), flush=True)
            del inputs

    device_name = torch.cuda.get_device_name() if on_cuda else "cpu"
    header = (
        f"device: {device_name}; torch {torch.__version__}; config: dim {config['num_attention_heads'] * 128}, "
        f"{args.layers} layers, {config['num_attention_heads']} heads, "
        f"{args.frames} frames at {args.width}x{args.height}; bf16 random weights ({weights_gb:.1f} GB); "
        f"measured bf16 matmul rate (8192^3): {peak_rate / 1e12:.0f} TFLOP/s; median of {args.repeats} "
        f"after {args.warmup} warm-up forwards"
    )
    table = [
        "| setup | persons | tokens | s / forward | TFLOP / forward | TFLOP/s | of matmul rate | peak GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['setup']} | {r['persons']} | {r['tokens']} | {r['seconds']:.3f} | {r['tflop']:.0f} | "
            f"{r['tflops_per_s']:.0f} | {r['utilisation']:.0%} | {r['peak_gb']:.1f} |"
        )
    text = header + "\n\n" + "\n".join(table) + "\n"
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_transformer.md").write_text(text)
        (Path(args.out) / "bench_transformer.json").write_text(json.dumps(dict(header=header, rows=rows), indent=1))
    print(text)


if __name__ == "__main__":
    main()
