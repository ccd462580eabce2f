"""What the ``alma-data`` command reports as one line instead of a traceback.

Every error a user can fix (a recipe value, a seed row, a run folder, an engine that
cannot run as asked, a refused query) derives from :class:`AlmaError`; its message names
the file, row or key and the fix. The CLI prints any of them as one line, and nothing
else needs to know their names. The classes that more than one layer raises live here;
those that one module owns live beside it, deriving from :class:`AlmaError` too.
"""

from __future__ import annotations


class AlmaError(Exception):
    """A problem with what the user gave; the message says what to do about it."""


class RecipeError(AlmaError, ValueError):
    """A recipe or an override that cannot be used; the message says how to fix it."""


class StoreError(AlmaError, RuntimeError):
    """A run folder that does not hold what was asked of it (a missing run, an unfinished
    table, a damaged file, a lock held by another build)."""


class EngineError(AlmaError, RuntimeError):
    """An engine that cannot run as asked (a server down, a model not served); the message says what to do."""


class BuildError(AlmaError, RuntimeError):
    """A build that cannot go on (a round out of range, a recipe that changed, no prompt left)."""


class Stopped(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM); raised where a Ctrl-C would be, so that every
    ``finally`` runs and libraries that pass KeyboardInterrupt through pass this through too."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def remote_cause(exc: BaseException) -> str:
    """What failed in a Ray task, as one phrase: the task's own exception without Ray's
    wrapping (``RayTaskError.cause``), or the error itself where Ray gives no cause."""
    cause = getattr(exc, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
