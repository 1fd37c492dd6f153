"""Upload checks for the HTTP API: sizes, types by content (magic bytes, then decoding), duration and pixel limits."""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path


MB = 1024 * 1024

# How formats start (their magic bytes): the file name and the declared content type are not trusted.
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
                (b"BM", "bmp"))  # fmt: skip
_AUDIO_MAGIC = ((b"fLaC", "flac"), (b"OggS", "ogg"), (b"ID3", "mp3"), (b"\xff\xfb", "mp3"), (b"\xff\xf3", "mp3"),
                (b"\xff\xf2", "mp3"))  # fmt: skip
IMAGE_TYPES = "PNG, JPEG, WebP, GIF or BMP"
AUDIO_TYPES = "WAV, FLAC, OGG or MP3"
VIDEO_TYPES = "MP4, MOV, WebM, MKV or AVI"


class UploadRejected(Exception):
    """An upload refused before anything is queued or written: `status_code` (413, 415, 422) and the reason."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 50 * MB
    max_audio_seconds: float = 600.0
    max_pixels: int = 4096 * 4096


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class CheckedVideo:
    data: bytes
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class CheckedAudio:
    data: bytes
    format: str
    seconds: float
    sample_rate: int


async def read_limited(upload, field: str, limits: Limits) -> bytes:
    """The upload's bytes; 413 as soon as it passes the size limit."""
    chunks, size = [], 0
    while True:
        chunk = await upload.read(MB)
        if not chunk:
            break
        size += len(chunk)
        if size > limits.max_upload_bytes:
            raise UploadRejected(
                413,
                f"{field}: larger than the server's limit of {limits.max_upload_bytes / MB:g} MB (its max_upload_mb)",
            )
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise UploadRejected(422, f"{field}: the file is empty")
    return data


def _sniff(data: bytes, table) -> str | None:
    for magic, name in table:
        if data.startswith(magic):
            return name
    return None


def check_image(data: bytes, field: str, limits: Limits) -> CheckedImage:
    """An image by its content: a known format (415 otherwise), within --max_pixels (422), decodable (415)."""
    from PIL import Image

    kind = _sniff(data, _IMAGE_MAGIC)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "webp"
    if kind is None:
        raise UploadRejected(415, f"{field}: not an image ({IMAGE_TYPES}, told by the file's content, not its name)")
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only: the size comes before any decoding
            width, height = image.size
            _check_pixels(field, width, height, limits)
            image.load()
    except UploadRejected:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for broken files
        raise UploadRejected(415, f"{field}: a {kind.upper()} file that cannot be decoded ({err})") from None
    return CheckedImage(data=data, format=kind, width=width, height=height)


def _check_pixels(field: str, width: int, height: int, limits: Limits) -> None:
    """422 past --max_pixels (the image's, or a video frame's, size from the file's header)."""
    if width * height <= limits.max_pixels:
        return
    raise UploadRejected(
        422,
        f"{field}: {width}x{height} is {width * height} pixels, more than the server's limit of "
        f"{limits.max_pixels} (its max_pixels); downscale it (the model works at 480P or 720P)",
    )


def _sniff_video(data: bytes) -> str | None:
    if data[4:8] == b"ftyp":  # ISO base media: the major brand tells QuickTime from MP4
        return "mov" if data[8:12] == b"qt  " else "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: the DocType near the start tells WebM from Matroska
        return "webm" if b"webm" in data[:64] else "mkv"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


def check_video(data: bytes, field: str, limits: Limits) -> CheckedVideo:
    """A video to dub by its content: a known container (415 otherwise), a frame size from ffmpeg's header within
    --max_pixels (422), then its first frame decoded (415 when it cannot be, or there is none)."""
    import imageio_ffmpeg

    kind = _sniff_video(data)
    if kind is None:
        raise UploadRejected(415, f"{field}: not a video ({VIDEO_TYPES}, told by the file's content, not its name)")
    # ffmpeg reads files: the bytes go to a private temporary folder (removed on return), never to the jobs folder.
    with tempfile.TemporaryDirectory(prefix="multitalk-upload-") as folder:
        path = Path(folder) / f"upload.{kind}"
        path.write_bytes(data)
        try:
            reader = imageio_ffmpeg.read_frames(str(path))
            try:
                meta = next(reader)  # the header: the size is known before any frame is decoded
                width, height = (int(v) for v in meta["size"])
                _check_pixels(field, width, height, limits)
                first = next(reader, None)
            finally:
                reader.close()  # stops ffmpeg (it would go on decoding the whole file)
        except UploadRejected:
            raise
        except Exception as err:  # noqa: BLE001 - ffmpeg's failures are the file's
            why = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise UploadRejected(415, f"{field}: a {kind.upper()} file that cannot be decoded ({why})") from None
    if first is None:
        raise UploadRejected(415, f"{field}: a {kind.upper()} file that holds no video frames")
    return CheckedVideo(data=data, format=kind, width=width, height=height)


def check_audio(data: bytes, field: str, limits: Limits) -> CheckedAudio:
    """Speech by its content: a known format (415), a duration from its header within --max_audio_seconds (422),
    then its first second decoded (415 when it cannot be)."""
    import soundfile as sf

    kind = _sniff(data, _AUDIO_MAGIC)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        kind = "wav"
    if kind is None:
        raise UploadRejected(415, f"{field}: not audio ({AUDIO_TYPES}, told by the file's content, not its name)")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - libsndfile's errors
        raise UploadRejected(415, f"{field}: a {kind.upper()} file that cannot be read ({err})") from None
    seconds = float(info.frames) / float(info.samplerate) if info.samplerate else 0.0
    if seconds > limits.max_audio_seconds:
        raise UploadRejected(
            422,
            f"{field}: {seconds:.1f} s of audio, more than the server's limit of {limits.max_audio_seconds:g} s "
            "(its max_audio_seconds); cut it into shorter jobs",
        )
    if seconds <= 0:
        raise UploadRejected(422, f"{field}: the audio holds no samples")
    try:
        sf.read(io.BytesIO(data), frames=int(info.samplerate), dtype="float32")
    except Exception as err:  # noqa: BLE001
        raise UploadRejected(415, f"{field}: a {kind.upper()} file that cannot be decoded ({err})") from None
    return CheckedAudio(data=data, format=kind, seconds=seconds, sample_rate=int(info.samplerate))
