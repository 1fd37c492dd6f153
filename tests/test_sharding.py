"""Sharded weights (FSDP2, `--dit_fsdp`/`--t5_fsdp`) on the CPU: two processes over gloo, each holding half of the
DiT's and umT5's parameters, alone and with Ulysses context parallelism over the same two processes, must give what
one process gives; a failing rank stops both with one message."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

import torch
import torch.distributed as dist


sys.path.insert(0, os.path.dirname(__file__))
from test_context_parallel import WORLD_SIZE, _transformer_inputs, run_workers  # noqa: E402


def _count_models_built(built: list) -> None:
    """Appends the class name of every diffusers model built in this process to `built`: the error case asserts
    that no rank built one (the ranks agreed to stop before loading), an effect a slow machine cannot blur the way
    it blurs a time limit."""
    from diffusers import ModelMixin

    init = ModelMixin.__init__

    def counting(self, *args, **kwargs):
        built.append(type(self).__name__)
        init(self, *args, **kwargs)

    ModelMixin.__init__ = counting  # this spawned worker's own copy of the class


CLI_ARGS = ["generate", "--tiny", "--device", "cpu", "--input_json", "examples/single_tiny.json", "--mode", "clip",
            "--frame_num", "5", "--sample_steps", "1", "--sample_text_guide_scale", "1", "--height", "64",
            "--width", "96"]  # fmt: skip


def _worker(rank: int, port: int, case: str, out_dir: str) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        results = {}
        if case in ("cli", "error"):
            from diffusers_multitalk import cli

            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE))  # as torchrun sets
            args = [*CLI_ARGS, "--ulysses_size", str(WORLD_SIZE), "--dit_fsdp", "--t5_fsdp",
                    "--save_file", os.path.join(out_dir, "video")]  # fmt: skip
            if case == "error" and rank == 1:
                args[args.index("--input_json") + 1] = os.path.join(out_dir, "missing.json")
            built = []
            _count_models_built(built)
            with open(os.path.join(out_dir, f"rank{rank}.stderr"), "w") as err, contextlib.redirect_stderr(err):
                results["status"] = cli.main(args)
            results["models_built"] = built
            torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
            return
        from diffusers_multitalk import enable_context_parallelism, make_tiny_pipeline
        from diffusers_multitalk.pipelines.sharding import local_parameter_count, shard_text_encoder, shard_transformer

        dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
        with torch.no_grad():
            pipe = make_tiny_pipeline(seed=0)
            transformer, text_encoder = pipe.transformer.eval(), pipe.text_encoder.eval()
            inputs = {persons: _transformer_inputs(transformer, persons) for persons in (1, 2)}
            expected = {p: transformer(**x, return_dict=False)[0] for p, x in inputs.items()}
            ids = torch.randint(0, text_encoder.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
            expected_text = text_encoder(ids).last_hidden_state
            results["whole"] = (local_parameter_count(transformer), local_parameter_count(text_encoder))

            shard_transformer(transformer)
            shard_text_encoder(text_encoder)
            results["local"] = (local_parameter_count(transformer), local_parameter_count(text_encoder))
            results["text"] = (text_encoder(ids).last_hidden_state - expected_text).abs().max().item()
            for persons, x in inputs.items():
                results[("sharded", persons)] = (
                    (transformer(**x, return_dict=False)[0] - expected[persons]).abs().max().item()
                )
            enable_context_parallelism(transformer, ulysses_degree=WORLD_SIZE)  # sharded first, then split
            for persons, x in inputs.items():
                results[("shard+cp", persons)] = (
                    (transformer(**x, return_dict=False)[0] - expected[persons]).abs().max().item()
                )

            other = make_tiny_pipeline(seed=0).transformer.eval()  # split first, then sharded (the runtime's order)
            enable_context_parallelism(other, ulysses_degree=WORLD_SIZE)
            shard_transformer(other)
            for persons, x in inputs.items():
                results[("cp+shard", persons)] = (
                    (other(**x, return_dict=False)[0] - expected[persons]).abs().max().item()
                )
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    except Exception:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(case: str, tmp_path) -> list[dict]:
    return run_workers(_worker, case, tmp_path)  # bounded by WORKER_LIMIT_S, generous for a busy machine


def test_sharded_transformer_and_text_encoder_match_one_process_and_halve_the_parameters(tmp_path):
    results = _run("transformer", tmp_path)
    for r in results:
        for key in ("sharded", "shard+cp", "cp+shard"):
            for persons in (1, 2):
                assert r[(key, persons)] < 1e-5, (key, persons, r)
        assert r["text"] < 1e-5, r
    for module in (0, 1):  # the DiT, umT5: the shards add up to the whole, each about half (dim 0, rounded up)
        whole = results[0]["whole"][module]
        local = [r["local"][module] for r in results]
        assert sum(local) == whole, (module, local, whole)
        assert max(local) <= 0.52 * whole, (module, local, whole)


def test_multitalk_generate_with_fsdp_and_ulysses_writes_the_single_process_video(tmp_path):
    """`torchrun --nproc_per_node 2 -m diffusers_multitalk generate ... --dit_fsdp --t5_fsdp --ulysses_size 2` over
    gloo: the first process writes the single-process video; the other writes nothing."""
    import imageio.v3 as iio

    from diffusers_multitalk import cli

    single = tmp_path / "single"
    assert cli.main([*CLI_ARGS, "--save_file", str(single)]) == 0
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    results = _run("cli", split_dir)
    assert [r["status"] for r in results] == [0, 0]
    assert all("MultiTalkTransformer3DModel" in r["models_built"] for r in results), results  # the count sees loads
    assert sorted(p.name for p in split_dir.iterdir() if p.suffix == ".mp4") == ["video.mp4"]
    frames_single = iio.imread(single.with_suffix(".mp4"))
    frames_split = iio.imread(split_dir / "video.mp4")
    assert frames_single.shape == frames_split.shape and frames_single.shape[0] == 5
    assert abs(frames_single.astype(int) - frames_split.astype(int)).max() <= 2  # same latents, same H.264 encode


def test_a_failing_rank_stops_every_rank_with_one_message(tmp_path):
    """Rank 1's input file is missing: both ranks exit with status 1 before either builds a model (rank 0 does not
    go on to load and then wait for rank 1), and only the first prints the error, naming rank 1 and the file."""
    results = _run("error", tmp_path)
    assert [r["status"] for r in results] == [1, 1]
    assert [r["models_built"] for r in results] == [[], []], results
    errors = [(tmp_path / f"rank{r}.stderr").read_text() for r in range(WORLD_SIZE)]
    lines = [line for text in errors for line in text.splitlines() if "error:" in line]
    assert len(lines) == 1 and "error: rank 1:" in lines[0] and "missing.json" in lines[0], errors
    assert "error:" in errors[0]
    assert not (tmp_path / "video.mp4").exists()
