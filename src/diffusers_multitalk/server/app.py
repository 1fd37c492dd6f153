"""The `multitalk serve` FastAPI app: the REST API under `/v1`, `/healthz`, and the Gradio UI mounted at `/`, with
one model for both."""

from __future__ import annotations

import json
import secrets
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from .. import runtime
from ..runtime.options import variant_of_options
from ..runtime.spec import GenerateOptions
from ..variants import variant_of_pipeline
from .events import job_events
from .generation import NEEDS_DUBBING_MODEL, api_words, bbox_block, can_dub, parse_settings, refusal, run_job
from .jobs import Job, JobManager, QueueFull, new_job_id
from .live import add_live_routes
from .metrics import JOB_ID, add_metrics, health
from .schemas import MAX_PERSONS, ErrorBody, Health, JobCreated, JobInfo, JobSettings, JobState
from .uploads import MB, Limits, UploadRejected, check_audio, check_image, check_video, read_limited


_ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 413, 415, 422, 429)}


class SharedPipeline:
    """The pipeline as the web UI sees it: each generation holds the server's GPU lock, so the UI's generations and
    the API's jobs take turns on the one model."""

    def __init__(self, pipe, lock):
        self.__dict__["_pipe"], self.__dict__["_lock"] = pipe, lock

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._pipe(*args, **kwargs)


def create_app(
    source,
    *,
    output_dir: str | Path = "outputs/app",
    max_queue: int = 8,
    max_upload_mb: float = 50,
    max_audio_seconds: float = 600,
    max_pixels: int = 4096 * 4096,
    api_key: str | None = None,
    keep_jobs: float = 3600,
    tiny: bool | None = None,
    options: GenerateOptions | None = None,
    ui: bool = True,
    job_options: dict | None = None,
) -> FastAPI:
    """
    The server's app (not started: run it with uvicorn). A `video` upload (dubbing) is refused at submission unless
    the pipeline's model dubs (the variant registry's `dubs_video`): told by the pipeline when it is given or loaded, else by the model flags; a
    function not yet called is not called for it (that would load the model in the request), so such a job is
    queued and fails at its start if the model it returns cannot dub.

    Args:
        source: `multitalk serve`'s parsed flags (the model options), a pipeline, or a function returning one.
        output_dir: jobs go to `output_dir/jobs/<id>/`, the UI's videos to `output_dir/ui/`.
        max_queue: jobs that may wait (a full queue answers 429).
        max_upload_mb / max_audio_seconds / max_pixels: upload limits (413, 422).
        api_key: when given, `/v1` wants `Authorization: Bearer <api_key>` (401 otherwise).
        keep_jobs: seconds a finished job (and its video) is kept.
        tiny: the model is the tiny random one (default: `source.tiny` for flags).
        options: the model flags `source` was loaded with, when it is a pipeline (jobs start from them).
        ui: mount the Gradio web app at `/`.
        job_options: more JobManager arguments (jobs.py): the job store (default: in memory; `multitalk serve`
            keeps it in a file under `output_dir`), the number of worker threads, a queue to send jobs to, ...
    """
    if isinstance(source, GenerateOptions) or options is not None:
        server_options = runtime.generate_options(options if options is not None else source)
    else:
        server_options = runtime.generate_options(tiny=bool(tiny))
    if _is_pipeline(source):
        # a given pipeline's model: its defaults (motion frames) for the checks
        server_options.task = variant_of_pipeline(source).task
    tiny = bool(server_options.tiny) if tiny is None else tiny
    holder = runtime.PipelineHolder(source)
    output_dir = Path(output_dir)
    jobs_dir = output_dir / "jobs"
    limits = Limits(int(max_upload_mb * MB), float(max_audio_seconds), int(max_pixels))
    gpu_lock = threading.RLock()
    manager = JobManager(lambda job, *a: run_job(holder(), job, *a), max_queue=max_queue, keep_seconds=keep_jobs,
                         gpu_lock=gpu_lock, jobs_dir=jobs_dir, **(job_options or {}))  # fmt: skip

    @asynccontextmanager
    async def lifespan(app):
        manager.start()
        yield
        manager.stop()

    app = FastAPI(
        title="MultiTalk API", version="1", lifespan=lifespan,
        description="Audio-driven talking video: submit a job (an image or a video to dub, speech and a prompt), "
        "follow its progress, download the mp4. One job runs on the GPU at a time, the others wait in a bounded queue.",
    )  # fmt: skip
    app.state.jobs, app.state.pipeline, app.state.limits = manager, holder, limits

    def dubs() -> bool | None:
        """Whether the served model dubs videos; None while that is unknown (a loader not yet called)."""
        if holder.loaded or _is_pipeline(source):
            return can_dub(holder())  # a given pipeline is returned as is: nothing loads
        if isinstance(source, GenerateOptions) or options is not None:  # the model flags pick the pipeline
            return variant_of_options(server_options).dubs_video
        return None

    bearer = HTTPBearer(auto_error=False, description="`--api_key`, when the server was started with one")
    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="`--api_key`, instead of Bearer")

    def check_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                  x_api_key: str | None = Depends(header_key)):  # fmt: skip
        if api_key is None:
            return
        given = credentials.credentials if credentials is not None else (x_api_key or "")
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    # A whole request past what the largest job could upload is refused before its body is read.
    request_limit = limits.max_upload_bytes * (1 + MAX_PERSONS) + MB

    @app.middleware("http")
    async def refuse_huge_bodies(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.method == "POST" and request.url.path == "/v1/jobs" and length and length.isdigit():
            if int(length) > request_limit:
                return JSONResponse(
                    {"detail": f"the request is {int(length) / MB:.1f} MB, more than this server takes "
                     f"({request_limit / MB:g} MB: {limits.max_upload_bytes / MB:g} MB a file: the server's max_upload_mb)"},
                    status_code=413,
                )  # fmt: skip
        return await call_next(request)

    api = APIRouter(prefix="/v1", dependencies=[Depends(check_key)], responses=_ERRORS)

    def job_or_404(job_id: str) -> Job:
        job = manager.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPException(
                404, f"no job {job_id} (finished jobs are removed after {keep_jobs:g} s: the server's keep_jobs)"
            )
        return job

    def video_url(request: Request, job: Job) -> str:
        return str(request.url_for("job_video", job_id=job.id).path)

    @api.post("/jobs", status_code=202, response_model=JobCreated, summary="Submit a job")
    async def submit_job(
        request: Request,
        prompt: str = Form(..., description="what the video shows"),
        image: UploadFile | None = File(None, description="the reference image (PNG, JPEG, WebP, GIF, BMP)"),
        video: UploadFile | None = File(
            None, description="instead of image: a video to dub (MP4, MOV, WebM, MKV, AVI; a server whose model dubs)"
        ),
        audio: list[UploadFile] = File(
            default=[], description="one recording per person, in order (WAV, FLAC, OGG, MP3)"
        ),
        tts: str | None = Form(None, description="instead of audio: a script '(s1) Hi! (s2) Hello.' spoken by TTS"),
        conversation: UploadFile | None = File(
            None,
            description="instead of audio: one recording of all the persons (a podcast, an interview), split by "
            "speaker; the persons' faces are found on the image (or the video's first frame) unless settings.bbox "
            "places them, and the first voice heard drives the leftmost face",
        ),
        num_persons: int | None = Form(None, ge=1, le=4, description="with conversation: its speakers (estimated)"),
        binding: str | None = Form(
            None, description="with conversation: the person each speaker drives, as JSON, e.g. [2, 1]"
        ),
        settings: str | None = Form(
            None,
            description='a JobSettings JSON object, e.g. {"mode": "clip", "sample_steps": 8}; unset fields keep their '
            "defaults",
            json_schema_extra=SETTINGS_SCHEMA,
        ),
    ):
        if manager.queue_full():
            raise HTTPException(
                429, f"the queue is full ({manager.max_queue} jobs waiting: the server's max_queue); retry later"
            )
        try:
            options, extras = parse_settings(settings, server_options)
        except runtime.RequestError as err:
            raise HTTPException(422, refusal(err)) from None
        except runtime.UserError as err:
            raise HTTPException(422, str(err)) from None
        _check_form(image is not None, video is not None, prompt, len(audio) + (conversation is not None), tts)
        extras = dict(extras, conversation=_conversation_form(conversation, audio, tts, num_persons, binding))
        if video is not None and dubs() is False:
            raise HTTPException(422, NEEDS_DUBBING_MODEL)
        try:
            if video is not None:
                data = await read_limited(video, "video", limits)
                checked = await run_in_threadpool(check_video, data, "video", limits)  # ffmpeg, off the event loop
            else:
                checked = check_image(await read_limited(image, "image", limits), "image", limits)
            speech = []
            for i, upload in enumerate(audio):
                field = api_words(f"cond_audio.person{i + 1}")
                speech.append(check_audio(await read_limited(upload, field, limits), field, limits))
            if conversation is not None:  # one mixed recording: stored as the job's one audio file
                speech.append(
                    check_audio(await read_limited(conversation, "conversation", limits), "conversation", limits)
                )
        except UploadRejected as err:
            raise HTTPException(err.status_code, err.detail) from None
        # the runtime's checks of the inputs (speech not silent, image size, boxes), before anything is queued
        warnings = await run_in_threadpool(_check_inputs, checked, video is not None, speech, extras, tts, prompt)

        # Checked: now the job gets its folder.
        job_id = new_job_id()
        folder = jobs_dir / job_id
        folder.mkdir(parents=True, exist_ok=False)
        # `video_in`: the job's output is video.mp4
        source_path = folder / (f"video_in.{checked.format}" if video is not None else f"image.{checked.format}")
        source_path.write_bytes(checked.data)
        image_path, video_path = (None, source_path) if video is not None else (source_path, None)
        audio_paths = []
        for i, clip in enumerate(speech, start=1):
            path = folder / f"person{i}.{clip.format}"
            path.write_bytes(clip.data)
            audio_paths.append(path)
        job = Job(
            id=job_id, folder=folder, prompt=prompt, options=options, extras=extras,
            image_path=image_path, video_path=video_path, source_size=(checked.height, checked.width),
            audio_paths=audio_paths, audio_seconds=[c.seconds for c in speech], tts=tts, warnings=warnings,
        )  # fmt: skip
        try:
            position = manager.submit(job)
        except QueueFull:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(
                429, f"the queue is full ({manager.max_queue} jobs waiting: the server's max_queue); retry later"
            ) from None
        return JobCreated(id=job_id, status=JobState.queued, position=position)

    @api.get("/jobs/{job_id}", response_model=JobInfo, summary="A job's status and progress")
    def get_job(job_id: str, request: Request):
        job = job_or_404(job_id)
        return manager.info(job, video_url(request, job))

    @api.get(
        "/jobs/{job_id}/video", name="job_video", summary="The job's mp4",
        response_class=FileResponse, responses={200: {"content": {"video/mp4": {}}, "description": "the mp4"}},
    )  # fmt: skip
    def get_video(job_id: str):
        job = job_or_404(job_id)
        if job.status != JobState.succeeded or job.video is None or not confined(job.video).is_file():
            raise HTTPException(409, f"job {job_id} is {job.status.value}: the video exists once it has succeeded")
        return FileResponse(confined(job.video), media_type="video/mp4", filename=f"multitalk_{job_id}.mp4")

    def confined(path: Path) -> Path:
        """A job's file, only inside the jobs folder (a record naming another path is refused)."""
        path = Path(path).resolve()
        if not path.is_relative_to(jobs_dir.resolve()):
            raise HTTPException(404, "no such file")
        return path

    add_live_routes(api, job_or_404, confined)  # GET /jobs/{id}/live.m3u8 and its segments, while the job runs

    @api.get("/jobs", response_model=list[JobInfo], summary="The newest jobs (a server with an api_key)")
    def list_jobs(request: Request, limit: int = 100):
        if api_key is None:  # without a key a job's id is its only key: a list would hand them out
            raise HTTPException(403, "listing jobs needs a server started with an api_key; ask for a job by its id")
        return [manager.info(job, video_url(request, job)) for job in manager.recent(max(1, min(limit, 1000)))]

    @api.get(
        "/jobs/{job_id}/events", summary="The job's progress as server-sent events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "`progress` events, then one `done`"}},
    )  # fmt: skip
    def get_events(job_id: str, request: Request):
        job = job_or_404(job_id)
        return StreamingResponse(
            job_events(manager, job, video_url(request, job)), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    @api.delete(
        "/jobs/{job_id}", response_model=JobInfo,
        summary="Cancel a queued or running job (a running one stops at its next step); remove a finished one",
    )  # fmt: skip
    def delete_job(job_id: str, request: Request):
        job = manager.cancel(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        info = manager.info(job, None)
        return JSONResponse(info.model_dump(mode="json"), status_code=202 if job.status == JobState.running else 200)

    app.include_router(api)
    _document_settings(app)

    @app.get("/healthz", response_model=Health, summary="Liveness, the queue and the live workers")
    def healthz():
        return health(manager, holder.loaded or _is_pipeline(source))

    add_metrics(app, manager)

    if ui:
        _mount_ui(app, holder, gpu_lock, output_dir / "ui", tiny, server_options)
    return app


# The `settings` form field holds JSON: its schema is JobSettings (built from the runtime's GenerationSettings).
SETTINGS_SCHEMA = {
    "contentMediaType": "application/json",
    "contentSchema": {"$ref": "#/components/schemas/JobSettings"},
}


def _document_settings(app: FastAPI) -> None:
    """Puts JobSettings into `/openapi.json`'s components, where the `settings` field's content schema points."""
    default_openapi = app.openapi

    def openapi():
        if app.openapi_schema is None:
            document = default_openapi()
            schema = JobSettings.model_json_schema(ref_template="#/components/schemas/{model}")
            document.setdefault("components", {}).setdefault("schemas", {})["JobSettings"] = schema
        return app.openapi_schema

    app.openapi = openapi


def _is_pipeline(source) -> bool:
    from diffusers import DiffusionPipeline

    return isinstance(source, DiffusionPipeline)


# How a person who only listens is made: not through the API, where every person speaks.
LISTENER = 'a person who only listens is an input JSON\'s "None" entry (multitalk generate); here every person speaks'


def _check_inputs(checked, is_video: bool, speech, extras: dict, tts: str | None, prompt: str) -> list[str]:
    """The runtime's checks of a job's inputs (the image's size, each person's speech, the boxes inside the image),
    answered 422 naming the API's fields; returns the warnings the job starts with (a prompt the text encoder cuts)."""
    problems = [] if is_video else runtime.image_problems(checked.data, "cond_image")[0]
    conversation = extras.get("conversation")
    if conversation is not None:  # one mixed recording: it must decode and be heard; its persons come later
        tracks = {"conversation": speech[0].data}
        persons = conversation["num_persons"] or len(extras.get("bbox") or ()) or None
    else:
        tracks = {f"person{i}": clip.data for i, clip in enumerate(speech, start=1)}
        persons = len(speech) if speech else _speakers(tts)
    problems += runtime.speech_problems(tracks, LISTENER)
    if extras.get("bbox") is not None:
        try:
            boxes = bbox_block(extras["bbox"], persons)
        except runtime.RequestError as err:
            problems += err.problems
        else:
            problems += runtime.box_problems(boxes, (checked.width, checked.height))
    if problems:
        raise HTTPException(422, refusal(runtime.RequestError(problems)))
    warning = runtime.prompt_problem(prompt)
    return [] if warning is None else [warning.render(api_words)]


def _conversation_form(upload, audio: list, tts: str | None, num_persons: int | None, binding: str | None):
    """The job's `conversation` extras ({"num_persons", "binding"}) for a mixed-recording job, else None; 422 for
    one given with per-person audio or a script, or a binding that is not a permutation of the persons."""
    if upload is None:
        if num_persons is not None or binding is not None:
            raise HTTPException(422, "num_persons / binding: only go with a conversation upload (one mixed recording)")
        return None
    if audio or tts is not None:
        raise HTTPException(422, "conversation / audio / tts: give one mixed recording, or one per person, or a script")
    order = None
    if binding is not None:
        try:
            order = json.loads(binding)
        except json.JSONDecodeError:
            order = binding
        count = num_persons or (len(order) if isinstance(order, list) else 0)
        if not isinstance(order, list) or sorted(order) != list(range(1, count + 1)):
            raise HTTPException(
                422, f"binding: give each speaker a different person 1..{count or 'N'} as a JSON list, e.g. [2, 1]"
            )
    return {"num_persons": num_persons or (len(order) if order else None), "binding": order}


def _check_form(image: bool, video: bool, prompt: str, recordings: int, tts: str | None) -> None:
    """422 for a form without a picture (or with two), a prompt, or speech (or with both kinds)."""
    if image and video:
        raise HTTPException(422, "image / video: give a reference picture or a video to dub, not both")
    if not image and not video:
        raise HTTPException(422, "image: missing; send the reference picture as 'image' or a video to dub as 'video'")
    if not prompt.strip():
        raise HTTPException(422, "prompt: empty; describe the scene")
    if tts is not None and recordings:
        raise HTTPException(422, "audio / tts: give recordings or a TTS script, not both")
    if tts is None and not recordings:
        raise HTTPException(422, "audio: missing; send one 'audio' file per person, or a 'tts' script")
    if recordings > MAX_PERSONS:
        raise HTTPException(422, f"audio: {recordings} files; at most {MAX_PERSONS} persons")
    if tts is not None:
        _check_script(tts)


def _check_script(text: str) -> None:
    from ..audio.tts import parse_dialogue

    if not text.strip():
        raise HTTPException(422, "tts: empty; write the dialogue, e.g. '(s1) Hello! (s2) Hi.'")
    try:
        parse_dialogue(text)
    except (TypeError, ValueError) as err:
        raise HTTPException(422, f"tts: {err}") from None
    if _speakers(text) > MAX_PERSONS:
        raise HTTPException(422, f"tts: at most {MAX_PERSONS} speakers, (s1) to (s{MAX_PERSONS})")


def _speakers(text: str) -> int:
    from ..audio.tts import parse_dialogue

    return max(turn.speaker for turn in parse_dialogue(text)) + 1


def _mount_ui(app: FastAPI, holder, gpu_lock, ui_dir: Path, tiny: bool, options: GenerateOptions) -> None:
    """The Gradio web app at `/`, on the same model. Imported here, when the server mounts it: the server sits above
    the web app in the layers (pyproject.toml), and gradio loads only for a server that serves the UI."""
    import gradio as gr

    from .. import app as web

    demo = web.build_app(
        lambda: SharedPipeline(holder(), gpu_lock), output_dir=ui_dir, tiny=tiny,
        use_teacache=bool(options.use_teacache), teacache_threshold=options.teacache_thresh,
    )  # fmt: skip
    demo.queue(default_concurrency_limit=1)
    ui_dir.mkdir(parents=True, exist_ok=True)
    gr.mount_gradio_app(app, demo, path="/", allowed_paths=[str(ui_dir.resolve())], show_error=True)
