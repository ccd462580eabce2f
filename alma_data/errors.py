"""What the ``alma-data`` command reports as one line instead of a traceback.

Every error a user can fix (a recipe value, a seed row, a run folder, a refused query)
derives from :class:`AlmaError`; its message names the file, row or key and the fix.
"""

from __future__ import annotations


class AlmaError(Exception):
    """A problem with what the user gave; the message says what to do about it."""


class Stopped(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM); raised where a Ctrl-C would be, so that every
    ``finally`` runs and libraries that pass KeyboardInterrupt through pass this through too."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
