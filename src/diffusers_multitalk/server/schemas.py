"""The HTTP API's request and answer models (pydantic): they make `/openapi.json`. A job's `settings` model is built
from the runtime's own `GenerationSettings` (runtime/spec.py): the same names, defaults, limits and descriptions."""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..runtime.spec import GenerationSettings


# Generation settings a job does not carry: its speech comes from the form (`audio` files or a `tts` script), and
# splitting a video into shots is the command line's.
NOT_PER_JOB = ("audio_mode", "scene_seg")
MAX_PERSONS = 4
_LIMITS = ("ge", "gt", "le", "multiple_of")


def _settings_fields() -> dict:
    """`{name: (annotation, Field)}` for each generation setting a job may carry, from `GenerationSettings`."""
    hints = typing.get_type_hints(GenerationSettings)
    fields = {}
    for setting in dataclasses.fields(GenerationSettings):
        if setting.name in NOT_PER_JOB:
            continue
        meta = setting.metadata
        annotation = hints[setting.name]
        if meta.get("choices"):
            annotation = Literal[tuple(meta["choices"])]
            annotation = annotation | None if setting.default is None else annotation
        limits = {key: meta[key] for key in _LIMITS if key in meta}
        fields[setting.name] = (annotation, Field(setting.default, description=meta.get("description"), **limits))
    return fields


def _input_fields() -> dict:
    """The input JSON's fields a job may carry besides the prompt, the image and the speech (the form's)."""
    voices = {
        f"human{i}_voice": (str | None, Field(None, description=f"person {i}'s TTS voice (a Kokoro or espeak-ng name)"))
        for i in range(1, MAX_PERSONS + 1)
    }
    return dict(
        audio_type=(Literal["add", "para"], Field("add", description="add: recordings in turns; para: together")),
        bbox=(
            list[list[float]] | dict[str, list[float]] | None,
            Field(None, description="one box [top, left, bottom, right] per person, in image pixels"),
        ),
        negative_prompt=(str | None, Field(None, description="what the video should not show (none: MultiTalk's)")),
        **voices,
    )


JobSettings = create_model(
    "JobSettings",
    __config__=ConfigDict(extra="forbid"),
    __doc__="A job's `settings` (a JSON object in the form): the runtime's generation settings and input fields.",
    **_settings_fields(),
    **_input_fields(),
)


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINAL_STATES = (JobState.succeeded, JobState.failed, JobState.cancelled)


class Progress(BaseModel):
    """Where a job is: denoising steps over all chunks, and chunks (known once the speech is measured)."""

    step: int = Field(0, description="denoising steps done, over all chunks")
    steps: int | None = Field(None, description="denoising steps in all (chunks x steps per chunk)")
    chunk: int = Field(0, description="the chunk being generated (1-based; 0 before the first step)")
    chunks: int | None = Field(None, description="chunks in all")


class JobCreated(BaseModel):
    id: str
    status: JobState = JobState.queued
    position: int = Field(description="place in the queue: 1 runs next")


class JobInfo(BaseModel):
    id: str
    status: JobState
    position: int | None = Field(None, description="place in the queue while queued (1 runs next)")
    progress: Progress
    error: str | None = Field(None, description="why the job failed")
    cancel_requested: bool = False
    created_at: float = Field(description="Unix time")
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = Field(None, description="when a finished job and its files are removed (Unix time)")
    video_url: str | None = Field(None, description="the mp4, once the job succeeded")
    warnings: list[str] = Field(
        default_factory=list,
        description="what the run said it cut or changed: audio dropped by clip mode or max_frame_num, a held last "
        "frame, resampled speech, a prompt past the text length",
    )
    attempts: int = Field(0, description="runs started: more than 1 when a restart or a lost worker cut one short")


class WorkerHealth(BaseModel):
    id: str = Field(description="host-pid-kind-tag")
    kind: str = Field(description="embedded (a thread of the server) or queue (a `multitalk worker` process)")
    busy: bool = Field(description="whether it runs a job now")
    device: str | None = None


class Health(BaseModel):
    status: str = "ok"
    model_loaded: bool
    queued: int
    running: int = Field(0, description="jobs running now (on any worker)")
    max_queue: int
    queue: str = Field("embedded", description="embedded (this server's workers) or the queue's redis URL, no password")
    store: str = Field("", description="where the jobs are kept (sqlite file, or redis)")
    workers: list[WorkerHealth] = Field(default_factory=list, description="the live workers")


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong, naming the field and the fix")
