"""One build of a run at a time on a machine: a lock file in the run's local folder."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from alma_data.errors import StoreError

if TYPE_CHECKING:
    from alma_data.store.layout import RunFiles


@contextmanager
def build_lock(store: RunFiles) -> Iterator[None]:
    """Held while a build writes the run, so a second build of the same run on this machine
    stops with a message instead of writing over the first. (For a run in an object store
    the lock is in this machine's cache: builds from two machines are not kept apart.)"""
    import fcntl
    import socket

    path = store.local_root / ".build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise StoreError(f"run {store.run!r} ({store.where()}) is being built by {holder}; wait for that build to "
                         "end (or stop it), then run the same command again: it goes on from what is written")
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield
    finally:
        f.close()  # closing the file releases the lock; a killed build's lock goes with its process
