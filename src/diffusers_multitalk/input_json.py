"""Reading and checking MultiTalk input JSON files (``multitalk generate --input_json``).

The format is MultiTalk's own::

    {
      "prompt": "Two friends chat in a studio.",
      "cond_image": "assets/two_people.png",
      "audio_type": "add",                                   # or "para"; 2+ persons only, default "add"
      "cond_audio": {"person1": "a.wav", "person2": "b.wav"},
      "bbox": {"person1": [top, left, bottom, right], ...},  # optional, one box per person
      "tts_audio": {"text": "(s1) Hi. (s2) Hello!", "human1_voice": "...", "human2_voice": "..."}
    }

The structure is described by the JSON schema ``input_schema.json`` next to this file; on top of it
:func:`validate_input` checks what a schema cannot: that the files exist, that persons are numbered without gaps,
that boxes fit the image, and which of ``cond_audio`` / ``tts_audio`` the audio mode needs. Every problem is
collected and reported at once, each with its JSON path (``$.cond_audio.person2: 'x.wav' does not exist``).

Relative paths are looked up next to the JSON file first, then in the working directory (the reference only
uses the working directory, so its files, whose paths start with ``examples/...``, work unchanged when run from
its repository root, and ours work from anywhere). The first location that exists wins.

Bounding boxes use the reference's convention: it names them ``[x_min, y_min, x_max, y_max]`` but its first
pair indexes rows, so a box is ``[top, left, bottom, right]`` in pixels of ``cond_image``.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

from .utils.input_checks import audio_problem, box_problem, image_problem, prompt_warning


# The standard library's logger (diffusers' `get_logger` gives the same one, but importing diffusers imports torch:
# the command line checks its input before that).
logger = logging.getLogger(__name__)


__all__ = ["InputJSONError", "format_json_path", "load_input_json", "load_input_schema", "validate_input"]

SCHEMA_FILE = Path(__file__).with_name("input_schema.json")
TOP_LEVEL_KEYS = ("prompt", "cond_image", "cond_video", "audio_type", "cond_audio", "bbox", "tts_audio")
PERSON_KEY = re.compile(r"^person([1-9][0-9]*)$")
VOICE_KEY = re.compile(r"^human([1-9][0-9]*)_voice$")
TURN_MARK = re.compile(r"\(s(\d+)\)")
AUDIO_MODES = ("localfile", "tts")
# How the input JSON makes a person who only listens (the reference's convention).
_LISTENER = '; for a person who only listens, write "None" as that person\'s cond_audio entry'

_TYPE_WORDS = {
    "string": "a string",
    "object": "an object",
    "array": "a list",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "null": "null",
}


class InputJSONError(ValueError):
    """The input JSON has problems; ``problems`` lists them all, each as ``"$.path: message"``."""

    def __init__(self, source: str, problems: Iterable[str]):
        self.source = source
        self.problems = list(problems)
        count = len(self.problems)
        if count == 1:  # one line
            super().__init__(f"{source}: {self.problems[0]}")
            return
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {count} problems in the input JSON:\n{lines}")


@functools.lru_cache(maxsize=1)
def load_input_schema() -> dict:
    """The JSON schema of the input file (a dict)."""
    with open(SCHEMA_FILE, encoding="utf-8") as f:
        return json.load(f)


def format_json_path(parts: Iterable[Any]) -> str:
    """``["cond_audio", "person2"]`` -> ``$.cond_audio.person2``; list indices as ``[0]``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}"
        else:
            out += f"[{json.dumps(str(part))}]"
    return out


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggest(name: str, candidates: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if match:
        return match[0]
    lowered = {c.lower(): c for c in candidates}
    return lowered.get(name.lower().strip())


def _person_suggestion(key: str, prefix: str = "person") -> str | None:
    found = re.fullmatch(rf"\s*{prefix}[\s_-]*0*([1-9][0-9]*)\s*", key, flags=re.IGNORECASE)
    if found:
        return f"{prefix}{found.group(1)}"
    return _suggest(key, [f"{prefix}1", f"{prefix}2"])


# ----------------------------------------------------------------------------------------------------------------
# Schema errors -> messages
# ----------------------------------------------------------------------------------------------------------------
def _schema_problems(data) -> list[tuple[list, str]]:
    try:
        from jsonschema import Draft202012Validator
    except ImportError as err:  # a declared dependency; say so if an install lacks it
        raise ImportError("checking the input JSON needs the jsonschema package: pip install jsonschema") from err

    validator = Draft202012Validator(load_input_schema())
    problems: list[tuple[list, str]] = []
    boxes_reported: set[str] = set()
    for error in validator.iter_errors(data):
        path = list(error.absolute_path)
        kind = error.validator

        # A malformed box gives one message, whatever rule it broke.
        if len(path) >= 2 and path[0] == "bbox" and isinstance(data, dict) and isinstance(data.get("bbox"), dict):
            key = path[1]
            if key not in boxes_reported:
                boxes_reported.add(key)
                problems.append(
                    (path[:2], f"expected 4 numbers [x_min, y_min, x_max, y_max], got {_short(data['bbox'][key])}")
                )
            continue

        if kind == "required":
            instance = error.instance if isinstance(error.instance, dict) else {}
            for key in error.validator_value:
                if key in instance:
                    continue
                typo = [
                    k for k in instance if k not in error.schema.get("properties", {}) and _suggest(k, [key]) == key
                ]
                hint = f" (is {typo[0]!r} a typo of it?)" if typo else ""
                problems.append((path + [key], f"missing (required){hint}"))
        elif kind == "additionalProperties":
            known = list(error.schema.get("properties", {}))
            patterns = list(error.schema.get("patternProperties", {}))
            instance = error.instance if isinstance(error.instance, dict) else {}
            extras = [k for k in instance if k not in known and not any(re.search(p, k) for p in patterns)]
            for key in extras:
                candidates = list(known)
                if path == ["tts_audio"]:
                    candidates += [f"human{i}_voice" for i in (1, 2, 3)]
                    suggestion = _suggest(key, candidates) or _person_suggestion(key.replace("_voice", ""), "human")
                    if suggestion and not suggestion.endswith("_voice") and suggestion != "text":
                        suggestion += "_voice"
                else:
                    suggestion = _suggest(key, candidates)
                if path == ["cond_audio"] and not suggestion:  # a person's key, misspelt
                    person = _person_suggestion(str(key))
                    hint = f"; did you mean {person!r}?" if person else " (or conversation, num_persons, binding)"
                    problems.append((path + [key], f"persons are named person1, person2, ...{hint}"))
                    continue
                if suggestion:
                    problems.append((path + [key], f"unknown key; did you mean {suggestion!r}?"))
                else:
                    allowed = ", ".join(known + [p.strip("^$") for p in patterns])
                    problems.append((path + [key], f"unknown key (allowed: {allowed})"))
        elif kind == "propertyNames" or "propertyNames" in error.schema_path:
            key = error.instance
            suggestion = _person_suggestion(str(key))
            hint = f"; did you mean {suggestion!r}?" if suggestion else ""
            problems.append((path + [key], f"persons are named person1, person2, ...{hint}"))
        elif kind == "type":
            expected = error.validator_value
            expected = expected if isinstance(expected, str) else expected[0]
            what = _TYPE_WORDS.get(expected, expected)
            if (
                path
                and path[0] in ("cond_image",)
                or (len(path) == 2 and path[0] == "cond_audio" and path[1] not in ("num_persons", "binding"))
            ):
                what += " (a file path)"
            if path == []:
                what += " (the file's top level)"
            problems.append((path, f"expected {what}, got {_json_type(error.instance)} {_short(error.instance)}"))
        elif kind == "enum":
            allowed = " or ".join(repr(v) for v in error.validator_value)
            problems.append((path, f"expected {allowed}, got {_short(error.instance)}"))
        elif kind == "minLength":
            problems.append((path, "must not be empty"))
        else:
            problems.append((path, error.message))
    return problems


# ----------------------------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------------------------
def _resolve(value: str, base_dir: Path | None, cwd: Path) -> tuple[Path | None, list[Path]]:
    """(the existing file, the places looked at). Relative paths: next to the JSON first, then the working dir."""
    path = Path(os.path.expanduser(value))
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = []
        for root in (base_dir, cwd):
            if root is None:
                continue
            candidate = (root / path).resolve()
            if candidate not in candidates:
                candidates.append(candidate)
    for candidate in candidates:
        if candidate.is_file():
            return candidate, candidates
    return None, candidates


def _kokoro_folder_of(voice: str, base_dir: Path | None, cwd: Path) -> Path | None:
    """The Kokoro-82M folder a ``<folder>/voices/<name>.pt`` path points into, if that folder has Kokoro's weights."""
    from .audio.tts import KOKORO_CONFIG_NAME, KOKORO_VOICES_DIR, KOKORO_WEIGHTS_NAME

    path = Path(voice).expanduser()
    if path.parent.name != KOKORO_VOICES_DIR:
        return None
    for root in [Path()] if path.is_absolute() else [r for r in (base_dir, cwd) if r is not None]:
        folder = root / path.parent.parent
        if (folder / KOKORO_CONFIG_NAME).is_file() and (folder / KOKORO_WEIGHTS_NAME).is_file():
            return folder
    return None


def _missing_message(value: str, tried: list[Path]) -> str:
    folder = next((t for t in tried if t.is_dir()), None)
    if folder is not None:
        return f"{value!r} is a directory ({folder}); give a file"
    if len(tried) <= 1:
        return f"{value!r} does not exist"
    return f"{value!r} does not exist (looked in {' and '.join(str(t.parent) for t in tried)})"


def _numbered(keys: Iterable[str], pattern: re.Pattern) -> dict[int, str]:
    out = {}
    for key in keys:
        found = pattern.match(key)
        if found:
            out[int(found.group(1))] = key
    return dict(sorted(out.items()))


def _gap_problems(numbers: Iterable[int], path: list, name: str) -> list[tuple[list, str]]:
    numbers = sorted(numbers)
    if not numbers:
        return []
    missing = [n for n in range(1, numbers[-1] + 1) if n not in numbers]
    return [
        (path, f"{name.format(n)} is missing (number them {name.format(1)}, {name.format(2)}, ... without gaps)")
        for n in missing
    ]


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------
def _conversation(block: dict, persons: dict, base_dir, cwd) -> tuple[dict | None, list[tuple[list, str]]]:
    """`cond_audio.conversation` (one mixed recording) checked: the file resolves, decodes and is not silent; not
    beside person1, person2, ...; `binding` a permutation of 1..num_persons. Returns ({"recording", "num_persons",
    "binding"} or None, problems)."""
    if "conversation" not in block:
        for key in ("num_persons", "binding"):
            if key in block:
                return None, [(["cond_audio", key], "only goes with cond_audio.conversation (one mixed recording)")]
        return None, []
    problems = []
    if persons:
        problems.append((["cond_audio", "conversation"], "give person1, person2, ... or conversation, not both"))
    value, found = block["conversation"], None
    if isinstance(value, str) and value:
        found, tried = _resolve(value, base_dir, cwd)
        if found is None:
            problems.append((["cond_audio", "conversation"], _missing_message(value, tried)))
        else:
            why = audio_problem(found)
            if why is not None:
                problems.append((["cond_audio", "conversation"], f"{value!r}: {why}"))
    count, binding = block.get("num_persons"), block.get("binding")
    if isinstance(binding, list) and all(_json_type(v) == "number" for v in binding):
        count = count if isinstance(count, int) else len(binding)
        if sorted(binding) != list(range(1, count + 1)):
            problems.append(
                (
                    ["cond_audio", "binding"],
                    f"give each of the {count} speakers a different person 1..{count} (e.g. "
                    f"{list(range(count, 0, -1))}), got {binding}",
                )
            )
    recording = str(found) if found is not None else None
    count = count if isinstance(count, int) and not isinstance(count, bool) else None
    return dict(recording=recording, num_persons=count, binding=binding), problems


def validate_input(
    data: Any,
    base_dir: str | os.PathLike | None = None,
    audio_mode: str = "localfile",
    source: str = "input JSON",
    cwd: str | os.PathLike | None = None,
) -> dict:
    """Checks a parsed input file and returns it normalised; raises :class:`InputJSONError` listing every problem.

    Args:
        data: the parsed JSON.
        base_dir: the JSON file's folder (relative paths are looked up there first), or None.
        audio_mode: "localfile" (``cond_audio`` required) or "tts" (``tts_audio`` required).
        source: how to name the input in the error.
        cwd: the working directory to fall back to (default: the current one).

    Returns:
        ``{"prompt", "cond_image" or "cond_video" (+ "cond_video_is_image"), "audio_type", "cond_audio", "bbox",
        "tts_audio", "num_persons", "image_size"}``: paths absolute, persons ordered person1, person2, ...; ``cond_audio`` is empty in tts mode, ``bbox`` and
        ``tts_audio`` None when absent; ``image_size`` is ``(height, width)``.
    """
    if audio_mode not in AUDIO_MODES:
        raise ValueError(f"audio_mode must be one of {AUDIO_MODES}, got {audio_mode!r}")
    base_dir = Path(base_dir).resolve() if base_dir is not None else None
    cwd = Path(cwd).resolve() if cwd is not None else Path.cwd()
    problems = _schema_problems(data)
    result: dict[str, Any] = {}

    if isinstance(data, dict):
        # --- the audio mode decides which audio block is needed
        has_tts = isinstance(data.get("tts_audio"), dict)
        if audio_mode == "localfile":
            if "cond_audio" not in data:
                hint = "; this file has tts_audio: run with --audio_mode tts" if has_tts else ""
                problems.append((["cond_audio"], f"missing (required with --audio_mode localfile){hint}"))
            elif isinstance(data["cond_audio"], dict) and not any(
                PERSON_KEY.match(k) or k == "conversation" for k in data["cond_audio"]
            ):
                hint = "; this file has tts_audio: run with --audio_mode tts" if has_tts else ""
                problems.append((["cond_audio"], f"no audio given (give person1, person2, ... their files){hint}"))
        elif "tts_audio" not in data:
            problems.append((["tts_audio"], "missing (required with --audio_mode tts)"))

        # --- the image, or the video (or image) a dubbing model animates
        image = data.get("cond_image")
        image_size = None
        if "cond_image" in data and "cond_video" in data:
            problems.append(
                (["cond_video"], "give cond_image (an image to animate) or cond_video (a video to dub), not both")
            )
        elif "cond_image" not in data and "cond_video" not in data:
            problems.append((["cond_image"], "missing: give cond_image (an image) or cond_video (a video to dub)"))
        video = data.get("cond_video")
        if isinstance(video, str) and video and "cond_image" not in data:
            found, tried = _resolve(video, base_dir, cwd)
            if found is None:
                problems.append((["cond_video"], _missing_message(video, tried)))
            else:
                image_size, is_image, why = probe_visual(found)
                if image_size is None:
                    problems.append(
                        (["cond_video"], f"{video!r} is neither an image nor a video ffmpeg can read ({why})")
                    )
                result["cond_video"] = str(found)
                result["cond_video_is_image"] = is_image
        if isinstance(image, str) and image:
            found, tried = _resolve(image, base_dir, cwd)
            if found is None:
                problems.append((["cond_image"], _missing_message(image, tried)))
            else:
                why, size = image_problem(found)
                if why is not None:
                    problems.append((["cond_image"], f"{image!r}: {why}"))
                if size is not None:
                    image_size = (size[1], size[0])
                result["cond_image"] = str(found)

        # --- persons and their audio
        persons: dict[int, str] = {}
        cond_audio: dict[str, str | None] = {}
        if audio_mode == "localfile" and isinstance(data.get("cond_audio"), dict):
            block = data["cond_audio"]
            persons = _numbered(block, PERSON_KEY)
            problems += _gap_problems(persons, ["cond_audio"], "person{}")
            for key in persons.values():
                value = block[key]
                if not isinstance(value, str) or not value:
                    continue  # reported by the schema
                if value.strip() == "None":  # the reference's silent person (a listener)
                    cond_audio[key] = None
                    continue
                found, tried = _resolve(value, base_dir, cwd)
                if found is None:
                    problems.append((["cond_audio", key], _missing_message(value, tried)))
                    continue
                why = audio_problem(found)
                if why is not None:
                    problems.append((["cond_audio", key], f"{value!r}: {why}{_LISTENER if 'silent' in why else ''}"))
                cond_audio[key] = str(found)
            if persons and all(str(block.get(key)).strip() == "None" for key in persons.values()):
                problems.append((["cond_audio"], "every person is 'None' (silent): give at least one person's audio"))
            conversation, conversation_problems = _conversation(block, persons, base_dir, cwd)
            problems += conversation_problems
            if conversation and conversation["num_persons"]:
                persons = {n: f"person{n}" for n in range(1, conversation["num_persons"] + 1)}
            result["conversation"] = conversation

        # --- TTS
        tts = None
        if isinstance(data.get("tts_audio"), dict):
            block = data["tts_audio"]
            voices = _numbered(block, VOICE_KEY)
            problems += _gap_problems(voices, ["tts_audio"], "human{}_voice")
            tts = {"text": block.get("text")}
            for key in voices.values():
                value = block[key]
                if not isinstance(value, str) or not value:
                    continue
                looks_like_file = (
                    value.endswith((".pt", ".pth", ".bin", ".safetensors")) or "/" in value or "\\" in value
                )
                if looks_like_file:
                    found, tried = _resolve(value, base_dir, cwd)
                    if found is None and _kokoro_folder_of(value, base_dir, cwd) is not None:
                        # Kokoro is here, so this voice would be used: a missing file is an error.
                        problems.append((["tts_audio", key], _missing_message(value, tried)))
                    elif found is None:
                        # No Kokoro weights at all: espeak-ng speaks with a voice chosen from the name.
                        logger.warning(
                            "$.tts_audio.%s: '%s' does not exist and no Kokoro-82M folder holds it; espeak-ng will "
                            "speak instead (download hexgrad/Kokoro-82M for Kokoro's voices).",
                            key,
                            value,
                        )
                    tts[key] = str(found) if found else value
                else:
                    tts[key] = value  # a voice name, e.g. "af_heart"
            text = block.get("text")
            if isinstance(text, str) and text and voices:
                marks = sorted({int(m) for m in TURN_MARK.findall(text)})
                if len(voices) > 1 and not marks:
                    problems.append(
                        (["tts_audio", "text"], f"{len(voices)} voices, but no turns: mark them (s1) ... (s2) ...")
                    )
                for mark in marks:
                    if mark not in voices:
                        problems.append((["tts_audio", "text"], f"turn (s{mark}) has no human{mark}_voice"))
            if audio_mode == "tts":
                persons = voices

        # --- boxes
        bbox = None
        if isinstance(data.get("bbox"), dict) and result.get("conversation") and not persons:
            problems.append((["bbox"], "give cond_audio.num_persons with boxes for a conversation (one box a person)"))
        if isinstance(data.get("bbox"), dict) and persons:
            block = data["bbox"]
            person_keys = {f"person{n}" for n in persons}
            bbox = {}
            for key in block:
                if PERSON_KEY.match(key) and key not in person_keys:
                    what = "cond_audio" if audio_mode == "localfile" else "tts_audio (human voices)"
                    problems.append((["bbox", key], f"no such person in {what}"))
            for number in persons:
                key = f"person{number}"
                if key not in block:
                    problems.append((["bbox"], f"no box for {key} (give one box per person, or no bbox at all)"))
                    continue
                box = block[key]
                if not (isinstance(box, list) and len(box) == 4 and all(_json_type(v) == "number" for v in box)):
                    continue  # reported by the schema
                # the image's size as (width, height); a box is checked against it once it is known
                why = box_problem(box, (image_size[1], image_size[0]) if image_size else (math.inf, math.inf))
                if why is not None:
                    problems.append((["bbox", key], why))
                bbox[key] = [float(v) for v in box]

        warning = prompt_warning(data.get("prompt"))
        if warning is not None:
            logger.warning("$.prompt: %s", warning)

        if not problems:
            result.update(
                prompt=data["prompt"],
                audio_type=data.get("audio_type", "add"),
                cond_audio={f"person{n}": cond_audio[f"person{n}"] for n in persons}
                if audio_mode == "localfile" and not result.get("conversation")
                else {},
                bbox=bbox or None,
                tts_audio=tts,
                num_persons=len(persons),
                image_size=image_size,
            )

    if problems:
        order = {key: i for i, key in enumerate(TOP_LEVEL_KEYS)}

        def sort_key(item):
            path = item[0]
            return (order.get(path[0], len(order)) if path else -1, format_json_path(path))

        problems = sorted(problems, key=sort_key)
        unique = list(dict.fromkeys(f"{format_json_path(path)}: {message}" for path, message in problems))
        raise InputJSONError(source, unique)
    return result


def probe_visual(path: Path) -> tuple[tuple[int, int] | None, bool, str]:
    """``((height, width), is_image, why)`` of an image or a video file, read cheaply (PIL, then ffmpeg's header)."""
    import PIL.Image

    try:
        with PIL.Image.open(path) as img:
            return (img.height, img.width), True, ""
    except Exception:  # noqa: BLE001 - not an image: try it as a video
        pass
    try:
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        first = next(reader, None)
        reader.close()
    except Exception as err:  # noqa: BLE001 - any reader failure is the user's file
        return None, False, str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    if first is None:
        return None, False, "it holds no video frames"
    width, height = meta["size"]
    return (int(height), int(width)), False, ""


def load_input_json(
    path: str | os.PathLike, audio_mode: str = "localfile", cwd: str | os.PathLike | None = None
) -> dict:
    """Reads and checks an input JSON file (see :func:`validate_input`); raises :class:`InputJSONError`."""
    path = Path(path)
    if not path.is_file():
        raise InputJSONError(str(path), [f"$: the input file {str(path)!r} does not exist"])
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise InputJSONError(
            str(path), [f"$: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"]
        ) from err
    except UnicodeDecodeError as err:
        raise InputJSONError(str(path), [f"$: not UTF-8 text ({err})"]) from err
    return validate_input(data, base_dir=path.resolve().parent, audio_mode=audio_mode, source=str(path), cwd=cwd)
