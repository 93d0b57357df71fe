"""The app's two kinds of expected failure, and the one way every entry point reports them.

Bad input (UsageError) ends the process with one `error:` line and exit code 2, never a
traceback; a run that had to stop (RunStopped: a NaN loss, a full disk, Ctrl-C) ends with one
line and its own exit code, what was saved before staying on disk. This module imports
nothing of the app: every other module may raise these.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable


class UsageError(Exception):
    """Bad input from the user: reported as one line and exit code 2, never a traceback."""


class RunStopped(Exception):
    """Training stopped for a reason the user must act on (NaN loss, disk full, Ctrl-C);
    what was saved before stays. `exit_code` is the process's exit status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (or its type's name when empty), for
    one-line messages that quote a library's multi-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def entry_point(main: Callable[..., int]) -> Callable[..., int]:
    """Wraps a command's main(argv) so that it returns its exit code: main's own, 2 for a
    UsageError, the RunStopped's code, 130 for a Ctrl-C; each failure as one stderr line."""
    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except RunStopped as error:
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code
        except KeyboardInterrupt:
            print("\nstopped by Ctrl-C", file=sys.stderr)
            return 130
    return guarded
