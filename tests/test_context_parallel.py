"""Context parallelism (diffusers' `enable_parallelism`) on the CPU: two processes over gloo, each holding half of the
video tokens, must give what one process gives, for the transformer (1 and 2 persons, shards that cut a latent frame
in two) and for whole generations."""

from __future__ import annotations

import os
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from diffusers_multitalk.testing import column_person_masks


WORLD_SIZE = 2
# A bound on a multi-process run, not a speed check: it only stops a run that hangs (a collective one rank never
# reaches), so it is generous for a loaded 2-core CI machine, where the CLI workers alone took over 600 s.
WORKER_LIMIT_S = 1800


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _transformer_inputs(transformer, persons: int):
    """3 latent frames of 8x12 -> 3 x 24 tokens: each rank's 36 tokens end or start in the middle of frame 1."""
    c = transformer.config
    g = torch.Generator().manual_seed(persons)
    frames, latent_h, latent_w = 9, 8, 12
    masks = column_person_masks(persons, latent_h, latent_w)
    return dict(
        hidden_states=torch.randn(1, c.in_channels, (frames - 1) // 4 + 1, latent_h, latent_w, generator=g),
        timestep=torch.tensor([700.0]),
        encoder_hidden_states=torch.randn(1, 16, c.text_dim, generator=g),
        encoder_hidden_states_image=torch.randn(1, 257, c.image_dim, generator=g),
        audio_embeds=torch.randn(1, persons, frames, 5, c.audio_layers, c.audio_channels, generator=g),
        ref_target_masks=masks if persons > 1 else None,
    )


CLI_ARGS = [
    "generate",
    "--tiny",
    "--device",
    "cpu",
    "--input_json",
    "examples/two_person_tiny.json",
    "--sample_steps",
    "2",
    "--frame_num",
    "9",
    "--mode",
    "streaming",
    "--motion_frame",
    "5",
]


def case_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "video")


def _worker(rank: int, port: int, case: str, out_dir: str) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        from diffusers_multitalk import enable_context_parallelism, make_tiny_pipeline

        results = {}
        if case.startswith("cli"):
            from diffusers_multitalk import cli

            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE))  # as torchrun sets
            results["status"] = cli.main(
                [*CLI_ARGS, "--ulysses_size", str(WORLD_SIZE), "--save_file", case_dir(out_dir)]
            )
            torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
            return
        dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
        if case == "transformer":
            transformer = make_tiny_pipeline(seed=0).transformer.eval()
            inputs = {persons: _transformer_inputs(transformer, persons) for persons in (1, 2, 3)}
            with torch.no_grad():
                expected = {p: transformer(**x, return_dict=False)[0] for p, x in inputs.items()}
                enable_context_parallelism(transformer, ulysses_degree=WORLD_SIZE)
                for persons, x in inputs.items():
                    out = transformer(**x, return_dict=False)[0]
                    results[persons] = (out - expected[persons]).abs().max().item()
        else:
            from test_low_vram import generate

            pipe = make_tiny_pipeline(seed=0)
            teacache = case.startswith("teacache")
            if teacache:  # only the 5 retention steps of each branch compute
                pipe.transformer.enable_teacache(threshold=1e12)
            expected = generate(pipe, steps=8, mode="streaming")
            if case == "teacache_after":  # TeaCache enabled on a model that is already split
                pipe.transformer.disable_teacache()
            enable_context_parallelism(pipe, ulysses_degree=WORLD_SIZE)
            if case == "teacache_after":
                pipe.transformer.enable_teacache(threshold=1e12)
            computed = []
            pipe.transformer.blocks[1].attn1.register_forward_pre_hook(lambda *args: computed.append(1))
            latents = generate(pipe, steps=8, mode="streaming")
            results["computed_forwards"] = len(computed)
            results["latent_frames"] = latents.shape[2]
            results["error"] = (latents - expected).abs().max().item()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    except Exception:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(worker, case: str, tmp_path, limit: float = WORKER_LIMIT_S) -> list[dict]:
    """Starts `worker(rank, port, case, out_dir)` in WORLD_SIZE spawned processes and returns each rank's saved
    results; a rank that fails, or a run past `limit` seconds, is an AssertionError showing what the ranks wrote."""
    context = mp.start_processes(
        worker, args=(_free_port(), case, str(tmp_path)), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + limit
    try:
        while not context.join(timeout=2):
            if time.monotonic() > deadline:  # a collective that one rank never reaches would wait forever
                for process in context.processes:
                    process.kill()
                raise AssertionError(f"the {case} workers did not finish in {limit:g} s")
    except AssertionError:
        raise
    except Exception as error:
        written = [
            f"{p.name}:\n{p.read_text()}" for p in sorted(tmp_path.glob("*.err")) + sorted(tmp_path.glob("*.stderr"))
        ]
        saved = sorted(p.name for p in tmp_path.glob("rank*.pt"))  # saved: the failure came after the work returned
        raise AssertionError("\n".join([str(error), f"results saved: {saved}", *written])) from None
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]


def _run(case: str, tmp_path) -> list[dict]:
    return run_workers(_worker, case, tmp_path)


def test_transformer_forward_is_split_across_ranks_exactly(tmp_path):
    for results in _run("transformer", tmp_path):
        for persons in (1, 2, 3):
            assert results[persons] < 1e-5, (persons, results)


@pytest.mark.parametrize("case", ["generation", "teacache_before", "teacache_after"])
def test_generation_with_context_parallelism_matches_one_process(case, tmp_path):
    for results in _run(case, tmp_path):
        assert results["latent_frames"] == 5  # three chunks of 3 latent frames, joined without their 2-frame overlap
        assert results["error"] < 1e-4, results
        # 3 chunks x 8 steps x 3 guidance branches; with TeaCache only the 5 retention steps of each compute
        assert results["computed_forwards"] == 3 * (5 if case.startswith("teacache") else 8) * 3, results


def test_multitalk_generate_with_ulysses_size_writes_the_single_process_video(tmp_path):
    """`torchrun --nproc_per_node 2 -m diffusers_multitalk generate ... --ulysses_size 2`, here over gloo: the first
    process writes the same video as one process does; the other writes nothing."""
    from diffusers_multitalk import cli

    single = tmp_path / "single"
    assert cli.main([*CLI_ARGS, "--save_file", str(single)]) == 0
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    results = _run("cli", split_dir)
    assert [r["status"] for r in results] == [0, 0]
    written = sorted(p.name for p in split_dir.iterdir() if p.suffix == ".mp4")
    assert written == ["video.mp4"]
    import imageio.v3 as iio

    frames_single = iio.imread(single.with_suffix(".mp4"))
    frames_split = iio.imread(split_dir / "video.mp4")
    assert frames_single.shape == frames_split.shape and frames_single.shape[0] > 9
    assert abs(frames_single.astype(int) - frames_split.astype(int)).max() <= 2  # same latents, same H.264 encode
