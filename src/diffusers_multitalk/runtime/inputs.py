"""A request's inputs checked before any model, as field problems every front end says in its words: each person's
speech decodes and is not silent (`cond_audio.person2`), the reference image decodes and is large enough
(`cond_image`), each box is inside the image (`bbox.person2`), and a prompt past the text encoder's length is a
warning (`prompt`). The checks themselves are `utils/input_checks.py`'s (the input JSON runs them too)."""

from __future__ import annotations

import contextlib
import logging

from ..utils.input_checks import audio_problem, box_problem, image_problem, prompt_warning
from .spec import FieldProblem


__all__ = ["box_problems", "image_problems", "prompt_problem", "prompt_said", "speech_problems"]


def speech_problems(tracks: dict, listener: str) -> list[FieldProblem]:
    """`{"person1": source, ...}` (paths, bytes or `(waveform, rate)`; None for a listener) -> a problem for each
    track that does not decode or is silent; `listener` says how this front end makes a person who only listens."""
    problems = []
    for person, source in tracks.items():
        if source is None:
            continue
        why = audio_problem(source)
        if why is not None:
            hint = f"; {person}'s speech is needed ({listener})" if "silent" in why else ""
            problems.append(FieldProblem(f"cond_audio.{person}", why + hint))
    return problems


def image_problems(source, field: str = "cond_image") -> tuple[list[FieldProblem], tuple[int, int] | None]:
    """The reference image's problems (a folder, not decodable, too small) and its (width, height)."""
    why, size = image_problem(source)
    return ([] if why is None else [FieldProblem(field, why)]), size


def box_problems(boxes: dict | None, image_size: tuple[int, int]) -> list[FieldProblem]:
    """`{"person1": [top, left, bottom, right], ...}` in an image of `image_size` = (width, height) -> a problem for
    each box that is not four numbers, is empty or negative, or leaves the image (persons named 1-based)."""
    problems = []
    for person, box in (boxes or {}).items():
        why = box_problem(box, image_size)
        if why is not None:
            problems.append(FieldProblem(f"bbox.{person}", why))
    return problems


def prompt_problem(prompt: str) -> FieldProblem | None:
    """A warning (not a refusal) when the text encoder will cut the prompt."""
    why = prompt_warning(prompt)
    return None if why is None else FieldProblem("prompt", why, warning=True)


# The logger whose "The prompt is N tokens long" warning repeats what `prompt_problem` said before the model.
_PROMPT_LOGGER = "diffusers_multitalk.pipelines.pipeline_wan_audio_base"


class _PromptCutSaid(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "tokens long" not in record.getMessage()


@contextlib.contextmanager
def prompt_said(prompt: str):
    """While the pipeline runs a request whose prompt was already said to be cut (`prompt_problem`, before the model):
    its own warning of the same cut is left out, so that the cut is said in one line."""
    if prompt_problem(prompt) is None:
        yield
        return
    logger, said = logging.getLogger(_PROMPT_LOGGER), _PromptCutSaid()
    logger.addFilter(said)
    try:
        yield
    finally:
        logger.removeFilter(said)
