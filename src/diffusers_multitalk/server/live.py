"""The API's live video (issue 25): a running job's HLS stream, `GET /v1/jobs/{id}/live.m3u8` and its segments
`GET /v1/jobs/{id}/live/{segment}`, from the job's first decoded chunk on (404 before), behind the `/v1` router's
api_key check, read only from the job's own `live/` folder (segment names are checked against the one pattern the
stream writes; anything else, `..` included, is 404)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

from ..pipelines.live_stream import PLAYLIST_NAME, SEGMENT_PATTERN


__all__ = ["LIVE_FOLDER", "add_live_routes", "live_dir"]

LIVE_FOLDER = "live"  # under the job's folder
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"


def live_dir(job_folder) -> Path:
    """Where a job's worker writes its stream."""
    return Path(job_folder) / LIVE_FOLDER


def add_live_routes(api: APIRouter, job_or_404: Callable, confined: Callable[[Path], Path]) -> None:
    """Adds the two routes to the `/v1` router (`job_or_404(id)` finds the job, `confined(path)` refuses a path
    outside the jobs folder)."""

    def job_file(job_id: str, name: str) -> Path:
        job = job_or_404(job_id)
        folder = confined(live_dir(job.folder))
        path = (folder / name).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise HTTPException(
                404, f"job {job_id} has no {name}: the live stream starts with the first decoded chunk and ends with "
                "the job (a failed or cancelled job's is removed)"
            )  # fmt: skip
        return path

    @api.get(
        "/jobs/{job_id}/live.m3u8", name="job_live", summary="The job's live video (HLS), from its first chunk on",
        response_class=Response,
        responses={200: {"content": {PLAYLIST_TYPE: {}}, "description": "an EVENT playlist, one segment per chunk"}},
    )  # fmt: skip
    def get_live_playlist(job_id: str):
        text = job_file(job_id, PLAYLIST_NAME).read_text()
        # the file names its segments beside it; here they are under live/, relative to this URL
        lines = [line if not line or line.startswith("#") else f"{LIVE_FOLDER}/{line}" for line in text.splitlines()]
        return Response("\n".join(lines) + "\n", media_type=PLAYLIST_TYPE, headers={"Cache-Control": "no-cache"})

    @api.get(
        "/jobs/{job_id}/live/{segment}", name="job_live_segment", summary="One segment (chunk) of the live video",
        response_class=FileResponse, responses={200: {"content": {"video/mp2t": {}}, "description": "MPEG-TS"}},
    )  # fmt: skip
    def get_live_segment(job_id: str, segment: str):
        if not SEGMENT_PATTERN.fullmatch(segment):
            job_or_404(job_id)  # an unknown job is said as such
            raise HTTPException(404, f"no segment {segment!r}: segments are named like segment_00000.ts")
        return FileResponse(job_file(job_id, segment), media_type="video/mp2t")
