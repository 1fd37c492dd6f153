"""`multitalk serve`: the HTTP API and the web app on one port, on the model flags of `generate`."""

from __future__ import annotations

import importlib.util
from argparse import Namespace

from ..runtime.errors import UserError
from ..runtime.spec import ServeOptions


def cmd_serve(args: Namespace) -> int:
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be in 0..65535")
    for flag in ("max_queue", "max_upload_mb", "max_audio_seconds", "max_pixels"):
        if getattr(args, flag, 1) <= 0:
            raise UserError(f"--{flag} {getattr(args, flag)}: must be positive")
    if getattr(args, "keep_jobs", 0) < 0:
        raise UserError(f"--keep_jobs {args.keep_jobs}: must be 0 or more (seconds)")
    if importlib.util.find_spec("gradio") is None:
        raise UserError('the web app needs gradio: pip install "diffusers-multitalk[app]"')
    options = ServeOptions.from_fields(args)
    # The server and the web app are imported only here: their packages (fastapi, gradio) are optional extras.
    if args.share:  # a public gradio.live link exists only for Gradio's own server: the web app alone
        from .. import app

        app.launch(options)
        return 0
    missing = [name for name in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f'the HTTP API needs {", ".join(missing)}: pip install "diffusers-multitalk[app]"')
    from .. import server

    server.serve(options)  # blocks until the server stops
    return 0
