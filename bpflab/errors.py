"""The one exception for expected failures, and the Invoke task class that turns it
(and Ctrl-C) into a clean message and a non-zero exit instead of a traceback."""

import sys

from invoke import Exit, Task


class LabError(Exception):
    """An expected failure: the message says what went wrong and what to do next."""


class LabTask(Task):
    """A task whose expected failures and Ctrl-C end as one message and an exit code."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except LabError as error:
            raise Exit(f"error: {error}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("Interrupted.", code=130) from None
        except BrokenPipeError:  # output piped into `head` and the like
            sys.stderr.close()
            raise Exit(code=0) from None
