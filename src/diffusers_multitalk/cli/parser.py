"""The `multitalk` argument parser: MultiTalk's flags with its names and defaults, and ours."""

from __future__ import annotations

import argparse
import functools

from ..runtime.errors import PROG
from ..runtime.options import DEFAULT_SAMPLE_STEPS, GENERATE_DEFAULTS
from ..variants import DEFAULT_VARIANT, SIZES, TASKS, VARIANTS, WEIGHTS_OPTIONS


def str2bool(value: str) -> bool:
    """The reference's boolean flags: yes/true/t/y/1 and no/false/f/n/0."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, yes/no, 1/0), got {value!r}")


def _add_generate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate a talking video from an input JSON (MultiTalk's flags)",
        description=(
            "Generate a talking video. The flags are those of MultiTalk's generate_multitalk.py, with its names and "
            "defaults; the model comes from --ckpt_dir/--wav2vec_dir (the original checkpoints, MultiTalk's weights "
            "linked into ckpt_dir as its README says, or --multitalk_dir), --model (a converted diffusers folder or "
            "Hub id) or --tiny (a tiny random model, no downloads)."
        ),
    )
    g = p.add_argument_group("MultiTalk's flags")
    g.add_argument(
        "--task",
        default=DEFAULT_VARIANT.task,
        choices=TASKS,
        help="; ".join(f"{v.task}: {v.name}, {v.summary}" for v in VARIANTS)
        + " (a model's weights flags or sizes imply its task; a cond_video input, a model that dubs)",
    )
    g.add_argument(
        "--size",
        default=None,
        choices=SIZES,
        help="resolution bucket table (each model's own; default: the model's first); the video follows the image's "
        "aspect ratio",
    )
    g.add_argument("--frame_num", type=int, default=None, help="frames per clip, 4n+1 (the model's: 81; FlashTalk 33)")
    g.add_argument("--ckpt_dir", default=None, help="the Wan2.1-I2V-14B folder, with MultiTalk's weights linked in")
    g.add_argument("--quant_dir", default=None, help="the MeiGen-MultiTalk folder whose quant_models/ --quant reads")
    g.add_argument("--wav2vec_dir", default=None, help="the chinese-wav2vec2-base folder")
    g.add_argument("--lora_dir", nargs="+", default=None, help="LoRA files (Wan's original naming works)")
    g.add_argument(
        "--lora_scale", type=float, nargs="+", default=[1.2], help="one scale per LoRA, or one for all (1.2)"
    )
    g.add_argument(
        "--offload_model",
        type=str2bool,
        default=None,
        help="offload models to the CPU between uses (enable_model_cpu_offload); default: on with a GPU, as the reference on one GPU",
    )
    g.add_argument(
        "--ulysses_size",
        type=int,
        default=1,
        help="GPUs sharing one video (context parallelism, Ulysses); launch with torchrun --nproc_per_node N",
    )
    g.add_argument(
        "--ring_size",
        type=int,
        default=1,
        help="ring attention parallelism (only 1: diffusers' ring needs a CUDA kernel returning the log-sum-exp)",
    )
    g.add_argument(
        "--t5_fsdp", action="store_true", help="shard umT5's weights over the --ulysses_size processes (FSDP2)"
    )
    g.add_argument("--t5_cpu", action="store_true", help="keep the umT5 text encoder on the CPU")
    g.add_argument(
        "--dit_fsdp", action="store_true", help="shard the DiT's weights over the --ulysses_size processes (FSDP2)"
    )
    g.add_argument(
        "--save_file", default=None, help="output name; '.mp4' is appended (default: task_size_..._prompt_time)"
    )
    g.add_argument(
        "--audio_save_dir",
        default=None,
        help="also save the mixed (and TTS) audio as wav files under DIR/<image name>/ (as the reference does); "
        "default: no audio side files",
    )
    g.add_argument(
        "--binding_preview",
        default=None,
        metavar="PNG",
        help="with cond_audio.conversation (one mixed recording): draw the persons' boxes labelled with the speaker "
        "each one gets to this PNG, before the model loads",
    )
    g.add_argument(
        "--live",
        default=None,
        metavar="DIR",
        help="also stream the video while it is made: DIR/live.m3u8 (HLS, playable as it grows; ended when the mp4 "
        "is complete, removed on an error) and one segment per chunk, with its audio",
    )
    g.add_argument("--base_seed", type=int, default=42, help="seed; negative picks a random one")
    g.add_argument("--input_json", default="examples.json", help="the input file: prompt, cond_image, cond_audio, ...")
    g.add_argument(
        "--motion_frame",
        type=int,
        default=None,
        help="frames each streaming chunk continues from, 4n+1 ("
        + ", ".join(f"{v.name} {v.motion_frames}" for v in VARIANTS)
        + ")",
    )
    g.add_argument(
        "--mode",
        default=None,
        choices=["clip", "streaming"],
        help="default: the whole audio (one clip when it fits in --frame_num frames, else streaming); clip: one chunk "
        "of --frame_num frames, longer audio cut (with a warning); streaming: chunks until the audio ends",
    )
    g.add_argument(
        "--max_frame_num",
        type=int,
        default=None,
        help="cap the video at N frames (25 fps; the dubbing reference's flag); default: as long as the audio",
    )
    g.add_argument("--sample_steps", type=int, default=None, help=f"sampling steps ({DEFAULT_SAMPLE_STEPS})")
    g.add_argument("--sample_shift", type=float, default=None, help="timestep shift (7 at 480P, 11 at 720P)")
    g.add_argument(
        "--sample_text_guide_scale",
        type=float,
        default=None,
        help="text guidance (the model's: 5, FlashTalk 1; 1 with distillation LoRAs)",
    )
    g.add_argument(
        "--sample_audio_guide_scale",
        type=float,
        default=None,
        help="audio guidance (the model's: 4, FlashTalk 1; 2 with distillation LoRAs)",
    )
    g.add_argument(
        "--num_persistent_param_in_dit",
        type=int,
        default=None,
        help="low VRAM: keep the DiT blocks that fit in N parameters on the GPU, stream the others from the CPU "
        "block by block (0: lowest VRAM); the other models are offloaded too unless --offload_model False",
    )
    g.add_argument(
        "--audio_mode",
        default="localfile",
        choices=["localfile", "tts"],
        help="audio from files or from TTS (tts_audio)",
    )
    g.add_argument(
        "--use_teacache", action="store_true", help="TeaCache: skip the DiT on steps whose timestep changed little"
    )
    g.add_argument(
        "--teacache_thresh", type=float, default=0.2, help="TeaCache threshold, 0.2 to 0.5 (only with --use_teacache)"
    )
    g.add_argument("--use_apg", action="store_true", help="adaptive projected guidance")
    g.add_argument("--apg_momentum", type=float, default=-0.75, help="APG momentum (-0.75)")
    g.add_argument("--apg_norm_threshold", type=float, default=55, help="APG norm threshold (55)")
    g.add_argument(
        "--color_correction_strength", type=float, default=1.0, help="colour matching to the image, 0..1 (1)"
    )
    g.add_argument(
        "--quant",
        default=None,
        help="int8 or fp8: MultiTalk's quantised DiT and umT5 from --quant_dir (optimum-quanto); with --lora_dir, its "
        "first file is the quantised FusionX DiT, as in MultiTalk; without --quant_dir the float weights are quantised on "
        "the fly (--quant_backend); auto: fp8 with torchao where it runs, none elsewhere (the default of --preset "
        "fast); none: no quantisation",
    )
    g.add_argument(
        "--quant_backend",
        choices=["auto", "quanto", "torchao"],
        default=GENERATE_DEFAULTS["quant_backend"],
        help="who quantises on the fly: torchao runs the DiT's block linears in FP8 (a GPU of compute capability 8.9+) "
        "or int8; quanto is MultiTalk's scheme (DiT and umT5 weights). auto (default): torchao for fp8 on an FP8 GPU",
    )

    for variant in VARIANTS:  # each model's own weights flags (the variant registry)
        weights = p.add_argument_group(f"{variant.name}'s weights")
        for option in variant.weights:
            weights.add_argument(option.flag, default=None, help=option.help)
    g.add_argument(
        "--scene_seg",
        action="store_true",
        help="split the cond_video (and the audio) at shot boundaries (PySceneDetect) and dub each shot from its own "
        "frames (a model that dubs)",
    )

    o = p.add_argument_group("diffusers-multitalk's flags")
    source = o.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="a converted diffusers folder or Hub repo id (from_pretrained)")
    source.add_argument(
        "--tiny", action="store_true", help="a tiny random model built locally: no downloads, noise-like video"
    )
    o.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda if available)")
    o.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32"],
        help="dtype of the DiT and encoders (auto: bfloat16 on a GPU, float32 on the CPU and for --tiny)",
    )
    o.add_argument("--height", type=int, default=None, help="output height (multiple of 16) instead of the bucket's")
    o.add_argument("--width", type=int, default=None, help="output width (multiple of 16) instead of the bucket's")
    o.add_argument(
        "--attention_backend", default=None, help="a diffusers attention backend for the DiT (see `multitalk info`)"
    )
    o.add_argument(
        "--self_attention_kernel",
        default=None,
        choices=["auto", "dispatcher", "flash3_fp8", "sage_triton"],
        help="the video self-attention's kernel: flash3_fp8 (FlashAttention-3's FP8 forward, Hopper, an FA3 build "
        "with FP8), sage_triton, auto (flash3_fp8 where it runs; the default of --preset fast) or dispatcher "
        "(--attention_backend; the default)",
    )
    o.add_argument(
        "--preset",
        default=None,
        choices=["fast"],
        help="fast: the FusionX/lightx2v few-step sampling (8 steps, text guidance 1, audio guidance 2, shift 2, for "
        "distillation LoRAs) with the VAE in bf16, the DiT compiled on CUDA, --quant auto and --self_attention_kernel "
        "auto; flags you give win",
    )
    p.set_defaults(**GENERATE_DEFAULTS)  # the runtime holds every option's default, for all front ends
    return p


def _add_download_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "download",
        help="download Wan2.1-I2V-14B, MeiGen-MultiTalk and chinese-wav2vec2-base from the Hugging Face Hub",
        description=(
            "Download the checkpoints MultiTalk needs (only the files it uses; re-running resumes) into --target, "
            "and link MultiTalk's weights and index into the Wan folder as MultiTalk's README does."
        ),
    )
    p.add_argument("--target", default="weights", help="folder to download into (weights)")
    p.add_argument(
        "--size",
        default=DEFAULT_VARIANT.sizes[0].name,
        choices=SIZES,
        help="; ".join(
            f"{size.name}: {size.wan_repo.split('/')[-1]}"
            + ("" if variant is DEFAULT_VARIANT else f" + {variant.name}")
            for variant in VARIANTS
            for size in variant.sizes
        ),
    )
    p.add_argument(
        "--no_link",
        action="store_true",
        help="do not link MultiTalk's files into the Wan folder (keeps Wan's own index)",
    )
    p.add_argument(
        "--copy", action="store_true", help="copy MultiTalk's files into the Wan folder instead of symlinking"
    )
    p.add_argument("--tts", action="store_true", help="also download Kokoro-82M for --audio_mode tts")
    for variant in VARIANTS:  # the other models' weights, asked for beside any size (the variant registry)
        if variant.download.flag is not None:
            p.add_argument(f"--{variant.download.flag}", action="store_true", help=variant.download.help)
    p.add_argument("--max_workers", type=int, default=8, help="parallel downloads per repository (8)")
    return p


def _add_info_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="versions, device, attention backends, and which weights a folder holds",
        description="Print versions, the device, diffusers' attention backends, and the files found in the given folders.",
    )
    p.add_argument("--ckpt_dir", default=None, help="a Wan2.1-I2V-14B folder to check")
    p.add_argument("--wav2vec_dir", default=None, help="a chinese-wav2vec2-base folder to check")
    p.add_argument("--multitalk_dir", default=None, help="a MeiGen-MultiTalk folder to check")
    p.add_argument("--model", default=None, help="a converted diffusers folder (or Hub id) to check")
    return p


def _add_convert_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help="convert the original checkpoints into one diffusers folder",
        description=(
            "Convert Wan2.1-I2V-14B + MeiGen-MultiTalk + chinese-wav2vec2-base into a diffusers folder (from_pretrained); "
            "with another model's weights flags, that model instead of MultiTalk."
        ),
    )
    p.add_argument("--wan_dir", required=True, help="the Wan2.1-I2V-14B folder")
    for option in WEIGHTS_OPTIONS:  # each model's own weights (the variant registry); one model's at a time
        p.add_argument(option.flag, default=None, help=option.convert_help)
    p.add_argument("--wav2vec_dir", required=True, help="the chinese-wav2vec2-base folder")
    p.add_argument("--output_dir", required=True, help="where to write the diffusers folder")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the saved DiT and encoders (bfloat16)")
    p.add_argument("--lora_dir", default=None, help="a LoRA to fuse into the DiT")
    p.add_argument("--lora_scale", type=float, default=1.0, help="its scale (1.0)")
    p.add_argument("--force", action="store_true", help="overwrite --output_dir")
    p.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="also upload to this Hub repo")
    return p


SERVE_MODEL_FLAGS = (
    "--ckpt_dir",
    "--wav2vec_dir",
    "--model",
    "--tiny",
    "--lora_dir",
    "--lora_scale",
    "--quant",
    "--quant_dir",
    "--quant_backend",
    "--offload_model",
    "--num_persistent_param_in_dit",
    "--t5_cpu",
    "--device",
    "--dtype",
    "--attention_backend",
    "--self_attention_kernel",
    "--use_teacache",
    "--teacache_thresh",
    "--task",
    *(option.flag for option in WEIGHTS_OPTIONS),  # each model's own weights (the variant registry)
)


def _add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="the web app and the HTTP API (one process, one model)",
        description=(
            "Serve MultiTalk on one port: the REST API under /v1 (jobs with progress, cancellation and limits; "
            "/openapi.json) and the Gradio web app at /. A reference image, speech for 1 to 4 persons (recordings or "
            "a TTS script) and a prompt give an mp4. The model comes from the same flags as for generate (--tiny, "
            "--model or --ckpt_dir/--wav2vec_dir, ...) and is loaded once, before the server starts. Needs gradio, "
            'fastapi and uvicorn: pip install "diffusers-multitalk[app]".'
        ),
    )
    generate = _add_generate_parser(argparse.ArgumentParser(prog=PROG).add_subparsers())
    exclusive = {action for group in generate._mutually_exclusive_groups for action in group._group_actions}
    model = p.add_argument_group("model (the flags of generate)")
    source = model.add_mutually_exclusive_group()  # --model / --tiny, as in generate
    for action in generate._actions:
        if set(action.option_strings) & set(SERVE_MODEL_FLAGS):
            (source if action in exclusive else model)._add_action(action)
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1; 0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, default=7860, help="port (7860)")
    s.add_argument(
        "--output_dir",
        default="outputs/app",
        help="where jobs (jobs/<id>/) and the web app's videos (ui/) go (outputs/app)",
    )
    s.add_argument("--max_queue", type=int, default=8, help="API jobs that may wait; more answer 429 (8)")
    s.add_argument(
        "--max_upload_mb", type=float, default=50, help="largest upload, per file, in MB; larger answer 413 (50)"
    )
    s.add_argument(
        "--max_audio_seconds",
        type=float,
        default=600,
        help="longest speech per file, in seconds; longer answer 422 (600)",
    )
    s.add_argument(
        "--max_pixels",
        type=int,
        default=4096 * 4096,
        help="largest image or video frame, width x height; larger answer 422 (16777216)",
    )
    s.add_argument("--api_key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (default: no key)")
    s.add_argument("--keep_jobs", type=float, default=3600, help="seconds a finished job and its video are kept (3600)")
    s.add_argument(
        "--share",
        action="store_true",
        help="serve the web app alone through a public gradio.live link (Gradio's own server: no /v1 API)",
    )
    q = p.add_argument_group("service (docs/service.md)")
    q.add_argument(
        "--queue",
        default=None,
        metavar="redis://HOST:PORT/DB",
        help="keep the jobs in Redis and run them on `multitalk worker` processes (with --workers 0); default: the "
        "jobs are kept in OUTPUT_DIR/jobs.sqlite3 and run by this server",
    )
    q.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker threads in this server, one model each (cuda:0..N-1 on a GPU machine); 0: the API only (1)",
    )
    q.add_argument(
        "--max_attempts",
        type=int,
        default=3,
        help="runs a job may start: one cut short by a restart or a lost worker runs again, up to this (3)",
    )
    return p


def _add_worker_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "worker",
        help="run the jobs of a `multitalk serve --queue` API (one at a time, on this machine's model)",
        description=(
            "A worker of the job queue: takes the jobs the API (multitalk serve --queue URL --workers 0) queued and "
            "runs them on its model (the flags of generate), reading and writing the jobs folder the API shares "
            "(--output_dir). Start any number, on any machines that reach Redis and share the folder. SIGTERM hands "
            "the running job back to the queue. See docs/service.md."
        ),
    )
    generate = _add_generate_parser(argparse.ArgumentParser(prog=PROG).add_subparsers())
    exclusive = {action for group in generate._mutually_exclusive_groups for action in group._group_actions}
    model = p.add_argument_group("model (the flags of generate)")
    source = model.add_mutually_exclusive_group()
    for action in generate._actions:
        if set(action.option_strings) & set(SERVE_MODEL_FLAGS):
            (source if action in exclusive else model)._add_action(action)
    w = p.add_argument_group("worker")
    w.add_argument("--queue", required=True, metavar="redis://HOST:PORT/DB", help="the API's --queue")
    w.add_argument("--output_dir", default="outputs/app", help="the API's --output_dir (the shared jobs folder)")
    w.add_argument("--max_attempts", type=int, default=3, help="the API's --max_attempts (3)")
    w.add_argument(
        "--heartbeat_timeout",
        type=float,
        default=60,
        help="seconds after which a silent worker (killed, its machine lost) is dead and its job runs elsewhere (60)",
    )
    return p


def _add_conversation_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "diarize",
        help="split one mixed recording into one track per speaker (person1.wav ...) and its turns",
        description=(
            "Who speaks when in one recording (1-4 speakers): writes DIR/person1.wav ... personN.wav (each as long as "
            "the recording, silent where the others speak; overlapping speech in both) and DIR/turns.json "
            '({"turns": [{"start", "end", "speaker"}, ...]} in seconds), and prints the turns. Speakers are numbered '
            "by who is heard first. See docs/conversation.md."
        ),
    )
    p.add_argument("recording", help="the mixed recording (any audio or video file ffmpeg reads)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder the tracks and turns.json go to")
    p.add_argument("--num_persons", type=int, choices=range(1, 5), default=None, help="speakers (default: estimated)")
    p.add_argument(
        "--diarizer",
        choices=("embedded", "pyannote"),
        default="embedded",
        help="embedded (offline, default) or pyannote (pyannote.audio and its downloaded pipeline)",
    )
    p = subparsers.add_parser(
        "boxes",
        help="find the persons' faces on an image: their boxes as the input JSON's bbox (one JSON line)",
        description=(
            'Prints {"person1": [x_min, y_min, x_max, y_max], ...} (the input JSON\'s bbox convention: the first '
            "pair indexes rows), persons numbered left to right; with fewer faces found than persons, the reference's "
            "default strips and a note that says so."
        ),
    )
    p.add_argument("image", help="the reference image")
    p.add_argument("--num_persons", type=int, choices=range(1, 5), default=2, help="persons to place (2)")
    p.add_argument("--preview", default=None, metavar="PNG", help="also draw the boxes to this PNG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MultiTalk (audio-driven multi-person talking video) with diffusers.",
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="{generate,download,info,convert,serve,worker,diarize,boxes}"
    )
    _add_generate_parser(subparsers)
    _add_download_parser(subparsers)
    _add_info_parser(subparsers)
    _add_convert_parser(subparsers)
    _add_serve_parser(subparsers)
    _add_worker_parser(subparsers)
    _add_conversation_parsers(subparsers)
    return parser


# ----------------------------------------------------------------------------------------------------------------
# The command line's words for a request's fields: the one place that knows flag names
# ----------------------------------------------------------------------------------------------------------------
@functools.cache
def _flags() -> dict[str, str]:
    """`{field: flag}` for every flag of every subcommand (`frame_num` -> `--frame_num`)."""
    flags = {}
    for subparser in build_parser()._subparsers._group_actions[0].choices.values():
        for action in subparser._actions:
            if action.option_strings and action.dest != "help":
                flags.setdefault(action.dest, action.option_strings[0])
            elif not action.option_strings:  # a positional argument (`multitalk boxes IMAGE`): its name
                flags.setdefault(action.dest, action.dest)
    return flags


def flag_words(field: str) -> str:
    """A request field as the command line says it: its flag (`--frame_num`); a field of the input JSON as its JSON
    path (`$.cond_audio.person2`)."""
    flag = _flags().get(field)
    if flag is not None:
        return flag
    return "$." + field


def flag_text(problem) -> str:
    """A `FieldProblem` as one line of the command line (`--frame_num 80: must be 4n+1 ...`)."""
    return problem.render(flag_words)


# The pipeline's argument names, as the command line's flags (for a pipeline's own ValueError, which names them).
FLAG_OF_ARGUMENT = {
    "num_frames": "--frame_num",
    "motion_frames": "--motion_frame",
    "max_frames": "--max_frame_num",
    "num_inference_steps": "--sample_steps",
    "shift": "--sample_shift",
    "guidance_scale": "--sample_text_guide_scale",
    "audio_guidance_scale": "--sample_audio_guide_scale",
    "color_correction_strength": "--color_correction_strength",
    "height": "--height",
    "width": "--width",
    "resolution": "--size",
    "mode": "--mode",
    "live_dir": "--live",
}
