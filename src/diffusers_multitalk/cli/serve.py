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
    if getattr(args, "workers", 1) < 0 or getattr(args, "max_attempts", 1) < 1:
        raise UserError("--workers must be 0 or more, --max_attempts 1 or more")
    queue = getattr(args, "queue", None)
    if queue is not None and not queue.startswith(("redis://", "rediss://", "unix://")):
        raise UserError(f"--queue {queue}: expected a Redis URL, redis://HOST:PORT/DB")
    if queue is not None and args.workers:
        raise UserError("--queue: the jobs run on `multitalk worker` processes; add --workers 0")
    if queue is None and getattr(args, "workers", 1) == 0:
        raise UserError("--workers 0 serves the API only: it needs --queue redis://HOST:PORT/DB and `multitalk worker`")
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
    needed = ("prometheus_client", *(("dramatiq", "redis") if queue else ()))
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f'the service needs {", ".join(missing)}: pip install "diffusers-multitalk[queue]"')
    from .. import server

    server.serve(server.ServiceOptions.from_fields(args))  # blocks until the server stops
    return 0
