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
