"""Server-sent events of a job's progress: one `progress` event per change, a final `done` event, heartbeats. The
job is read from the store at each change, so the events follow a job run by another process as well."""

from __future__ import annotations

import asyncio
import json

from .schemas import FINAL_STATES


def format_event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


async def job_events(manager, job, video_url: str, heartbeat: float = 15.0):
    """Yields the job's state as it changes until it is finished (then a `done` event, and the stream ends; a job
    removed meanwhile ends it too)."""
    loop = asyncio.get_running_loop()
    version, quiet = -1, 0.0
    while True:
        if job.version != version:
            version = job.version
            info = manager.info(job, video_url).model_dump(mode="json")
            finished = job.status in FINAL_STATES
            yield format_event("done" if finished else "progress", info)
            if finished:
                return
            quiet = 0.0
        # wait for the next change in a thread (the store wakes it, or polls), a second at a time
        new = await loop.run_in_executor(None, manager.wait_for_change, job, version, 1.0)
        if new == -1:  # removed (cancelled and deleted, or expired)
            return
        if new == version:
            quiet += 1.0
            if quiet >= heartbeat:
                quiet = 0.0
                yield ": keep-alive\n\n"
        else:
            job = manager.get(job.id) or job
