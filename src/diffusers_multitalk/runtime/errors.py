"""The runtime's user-facing error, and SIGTERM raised as an exception."""

from __future__ import annotations

import sys


PROG = "multitalk"


class UserError(ValueError):
    """A user-facing error (a bad option, a missing file): the CLI prints it as one line, the app as a message, the
    HTTP API as a 4xx answer."""


class Terminated(BaseException):
    """SIGTERM, raised where the process is so that `finally` blocks and writers clean up."""


def raise_terminated(signum, frame):
    raise Terminated()


def note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


# How notes name a request's fields: the front end that prints them sets its words (the command line: its flags;
# `spec.note_about` reads them). By default a field is said by its name.
_WORDS = [None]


def speak_with(words):
    """Notes name fields with `words(field)` from now on (the command line passes its flag names; None: their
    names); returns the words used before."""
    previous, _WORDS[0] = _WORDS[0], words
    return previous


def note_words():
    return _WORDS[0] or (lambda name: name)
