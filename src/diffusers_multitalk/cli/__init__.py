"""The ``multitalk`` command.

    multitalk generate --tiny --input_json examples/two_person_tiny.json --save_file outputs/demo
    multitalk generate --ckpt_dir weights/Wan2.1-I2V-14B-480P --wav2vec_dir weights/chinese-wav2vec2-base \\
        --input_json my_input.json --sample_steps 40 --mode streaming --save_file talk
    multitalk download --target weights
    multitalk info --ckpt_dir weights/Wan2.1-I2V-14B-480P --wav2vec_dir weights/chinese-wav2vec2-base
    multitalk convert --wan_dir ... --multitalk_dir ... --wav2vec_dir ... --output_dir ...
    multitalk serve --tiny                       # the web app (Gradio); takes generate's model flags
    multitalk serve --queue redis://localhost:6379/0 --workers 0   # the API only; jobs run on:
    multitalk worker --queue redis://localhost:6379/0 --tiny        # a worker (any number, docs/service.md)
    torchrun --nproc_per_node 2 -m diffusers_multitalk generate ... --ulysses_size 2   # one video on 2 GPUs

``generate`` takes MultiTalk's ``generate_multitalk.py`` flags with the same names and defaults, and its input
JSON files. The flag -> pipeline-argument mapping lives in the runtime (:func:`~diffusers_multitalk.runtime.build_generation_kwargs`),
shared with the web app and the HTTP API; each subcommand is a module of this package, imported only when it runs.
Flags this build cannot honour (FSDP, ring attention, --quant values other than int8/fp8) stop the command with
an error naming them, before anything is loaded. ``--ulysses_size N`` under torchrun splits the DiT's video tokens
over N processes (pipelines/context_parallel.py, docs/multi_gpu.md). ``--num_persistent_param_in_dit N`` (the
reference's VRAM manager) is diffusers' group offloading here (pipelines/low_vram.py, docs/low_vram.md). ``--quant int8
--quant_dir <MeiGen-MultiTalk>`` loads MultiTalk's optimum-quanto files (loaders/quantized.py).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Sequence

from ..input_json import InputJSONError
from ..runtime.distributed import shutdown_distributed
from ..runtime.errors import PROG, Terminated, UserError, raise_terminated, speak_with
from ..runtime.quantization import import_torchao_quietly, torchao_available
from ..runtime.spec import RequestError
from .parser import build_parser, flag_words


# The CLI's name for the runtime's user-facing error.
CLIError = UserError


# Each subcommand's module is imported only when that command runs, so that `--help`, a usage error or a flag that
# is checked before any model (`generate --frame_num 80`) answers without importing torch: start-up time. Plain
# imports inside functions, which the import-linter contracts see.
def _generate():
    from .generate import cmd_generate

    return cmd_generate


def _download():
    from .download import cmd_download

    return cmd_download


def _info():
    from .info import cmd_info

    return cmd_info


def _convert():
    from .convert import cmd_convert

    return cmd_convert


def _serve():
    from .serve import cmd_serve

    return cmd_serve


def _worker():
    from .worker import cmd_worker

    return cmd_worker


def _diarize():
    from .conversation import cmd_diarize

    return cmd_diarize


def _boxes():
    from .conversation import cmd_boxes

    return cmd_boxes


COMMANDS = {"generate": _generate, "download": _download, "info": _info, "convert": _convert, "serve": _serve,
            "worker": _worker, "diarize": _diarize, "boxes": _boxes}  # fmt: skip

__all__ = ["CLIError", "COMMANDS", "PROG", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``multitalk`` console script; returns the exit status: 2 for a bad request (argparse's usage errors, and
    the runtime's checks of the flags and the input, each naming a flag or the input JSON's field), 1 for a run that
    failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    words = speak_with(flag_words)  # the runtime's notes name its fields as flags, while the command runs
    # SIGTERM unwinds like Ctrl-C, so the writers' cleanup runs and no part file stays behind.
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        # `generate` checks its flags first (they need no torch) and quiets torchao itself, just before loading
        if args.command not in ("download", "generate") and torchao_available():
            # first, before diffusers, peft or transformers import it (they do whenever it is installed)
            import_torchao_quietly()
        return int(COMMANDS[args.command]()(args) or 0)
    except RequestError as err:  # in the command line's words; a bad value: nothing was loaded or written
        print(f"{PROG} {args.command}: error: {err.render(flag_words)}", file=sys.stderr)
        return 2 if err.usage else 1
    except InputJSONError as err:  # a bad input, by its JSON paths; nothing was loaded or written
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{PROG} {args.command}: terminated", file=sys.stderr)
        return 143
    except Exception as err:  # noqa: BLE001 - one line, not a traceback; MULTITALK_TRACEBACK=1 shows it
        if os.environ.get("MULTITALK_TRACEBACK"):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(
            f"{PROG} {args.command}: error: {type(err).__name__}: {first} (MULTITALK_TRACEBACK=1 shows where)",
            file=sys.stderr,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        speak_with(words)
        shutdown_distributed()
