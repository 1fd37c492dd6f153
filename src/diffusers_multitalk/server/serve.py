"""Starts the server: loads the model once, builds the app, runs uvicorn until SIGTERM or Ctrl-C."""

from __future__ import annotations

from pathlib import Path

from .. import runtime
from ..runtime.spec import ServeOptions


def serve(args: ServeOptions) -> None:
    """`multitalk serve`'s flags -> the model loaded (so a broken folder fails now, not at the first job), the API
    and the UI served on `args.host`:`args.port`. Blocks until the server stops; stopping cancels the jobs."""
    import uvicorn

    from .app import create_app

    output_dir = Path(args.output_dir)
    runtime.check_writable(output_dir / "jobs" / ".probe", "output_dir")
    holder = runtime.PipelineHolder(args)
    runtime.note("loading the model" + (" (the tiny random one)" if args.tiny else ""))
    pipe = holder()
    app = create_app(
        pipe, output_dir=output_dir, max_queue=args.max_queue, max_upload_mb=args.max_upload_mb,
        max_audio_seconds=args.max_audio_seconds, max_pixels=args.max_pixels, api_key=args.api_key,
        keep_jobs=args.keep_jobs, tiny=bool(args.tiny), options=args,
    )  # fmt: skip
    runtime.note(
        f"serving the API at http://{args.host}:{args.port}/v1 and the web app at http://{args.host}:{args.port}/"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
