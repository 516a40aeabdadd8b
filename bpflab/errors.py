"""The one exception for expected failures, and the Invoke task class that turns it
(and Ctrl-C) into a clean message and a non-zero exit instead of a traceback."""

import sys

from invoke import Exit, Task


class LabError(Exception):
    """An expected failure: the message says what went wrong and what to do next;
    `code` is the exit status (a lab program's own status passes through)."""

    def __init__(self, message: str = "", code: int = 1):
        super().__init__(message)
        self.code = code


def shorten(text: str, width: int = 80) -> str:
    """Long input, cut for a message."""
    return text if len(text) <= width else f"{text[: width - 20]}… ({len(text)} characters)"


class LabTask(Task):
    """A task whose expected failures and Ctrl-C end as one message and an exit code."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except LabError as error:
            raise Exit(f"error: {error}" if str(error) else None, code=error.code) from None
        except KeyboardInterrupt:
            raise Exit("Interrupted.", code=130) from None
        except BrokenPipeError:  # output piped into `head` and the like
            sys.stderr.close()
            raise Exit(code=0) from None
