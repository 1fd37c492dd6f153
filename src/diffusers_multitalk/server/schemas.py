"""The HTTP API's request and answer models (pydantic): they make `/openapi.json`."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field


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


class Health(BaseModel):
    status: str = "ok"
    model_loaded: bool
    queued: int
    running: str | None = Field(None, description="the id of the job on the GPU")
    max_queue: int


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong, naming the field and the fix")
