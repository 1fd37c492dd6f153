"""`multitalk serve`: the web app on the model flags of `generate`."""

from __future__ import annotations

import importlib
import importlib.util
from argparse import Namespace

from ..runtime.errors import UserError


def cmd_serve(args: Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise UserError('the web app needs gradio: pip install "diffusers-multitalk[app]"')
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be in 0..65535")
    # The app is a front end of its own: started by name, never imported by the CLI (and gradio is optional).
    app = importlib.import_module("diffusers_multitalk.app")
    app.launch(args)  # blocks until the server stops
    return 0

