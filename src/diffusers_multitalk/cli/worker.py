"""`multitalk worker`: runs the jobs of a `multitalk serve --queue` API on this machine's model (docs/service.md)."""

from __future__ import annotations

import importlib.util
from argparse import Namespace

from ..runtime.errors import UserError


def cmd_worker(args: Namespace) -> int:
    if not args.queue.startswith(("redis://", "rediss://", "unix://")):
        raise UserError(f"--queue {args.queue}: expected a Redis URL, redis://HOST:PORT/DB")
    if args.max_attempts < 1:
        raise UserError(f"--max_attempts {args.max_attempts}: must be 1 or more")
    if args.heartbeat_timeout <= 0:
        raise UserError(f"--heartbeat_timeout {args.heartbeat_timeout}: must be positive (seconds)")
    missing = [name for name in ("dramatiq", "redis", "fastapi") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f'the worker needs {", ".join(missing)}: pip install "diffusers-multitalk[queue,app]"')
    from ..server.worker import WorkerOptions, run_worker

    run_worker(WorkerOptions.from_fields(args))  # blocks until SIGTERM or Ctrl-C
    return 0
