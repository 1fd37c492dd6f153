"""The HTTP API (`multitalk serve`): a FastAPI app with the REST API under `/v1` and the Gradio web app at `/`, one
model for both. A front end on the runtime layer, like the CLI and the web app."""

from .app import SharedPipeline, create_app
from .serve import ServiceOptions, serve


__all__ = ["ServiceOptions", "SharedPipeline", "create_app", "serve"]
