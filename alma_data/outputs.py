"""Where a command may write a file the user named, and how it writes it.

One guard for every command that writes outside the store (``query --out``, ``judge --out``,
``eval --out``, ``publish to=``, ``report``):

- never inside a run of the runs folder (the store is written by builds only), nor onto a
  file that is a hard link to a file of a run (a shard reached by another name);
- never over a folder that holds something, unless the user said ``--overwrite``;
- always through a temporary name beside the target, renamed into place when the whole file
  (or folder) is written, so a failure leaves what was there as it was.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alma_data.errors import RecipeError
from alma_data.store.files import DEFAULT_RUNS_DIR


def _runs_folders(runs_dir: str | Path | None) -> list[Path]:
    found = []
    for d in {str(runs_dir) if runs_dir else DEFAULT_RUNS_DIR, DEFAULT_RUNS_DIR}:
        if "://" in d:
            continue
        p = Path(d).expanduser()
        if p.is_dir():
            found.append(p.resolve())
    return found


def _run_of(path: Path, runs: list[Path]) -> Path | None:
    """The run folder ``path`` lies in (or is), if any."""
    for runs_dir in runs:
        try:
            rel = path.relative_to(runs_dir)
        except ValueError:
            continue
        if rel.parts:
            return runs_dir / rel.parts[0]
        return runs_dir
    return None


def _linked_into_store(path: Path, runs: list[Path]) -> Path | None:
    """A file of a run that ``path`` is a hard link to."""
    try:
        st = path.stat()
    except OSError:
        return None
    if not path.is_file() or st.st_nlink < 2:
        return None
    for runs_dir in runs:
        for folder, _, files in os.walk(runs_dir):
            for name in files:
                other = Path(folder) / name
                try:
                    o = other.stat()
                except OSError:
                    continue
                if (o.st_ino, o.st_dev) == (st.st_ino, st.st_dev):
                    return other
    return None


def check_output(path: str | Path, *, flag: str, runs_dir: str | Path | None = None, folder: bool = False,
                 overwrite: bool = False, allow_in: Path | None = None) -> Path:
    """Refuse (with one :class:`RecipeError` line) a place a command must not write; return the
    place as an absolute path. ``allow_in``: a folder of a run the command itself owns (the
    run's ``report/`` or ``export/``), where it may write though it is inside the run."""
    given = str(path)
    if not given.strip():
        raise RecipeError(f"{flag} is empty; name the file to write")
    target = Path(given).expanduser().absolute()
    resolved = target.resolve()
    runs = _runs_folders(runs_dir)
    inside = _run_of(resolved, runs)
    if inside is not None and not (allow_in is not None and resolved.is_relative_to(allow_in.resolve())):
        raise RecipeError(f"{flag} {given} is inside the runs folder ({inside}); only builds write there: "
                          "write it somewhere else")
    link = _linked_into_store(resolved, runs)
    if link is not None:
        raise RecipeError(f"{flag} {given} is a hard link to {link} of a run; writing it would change the run: "
                          "write somewhere else")
    if folder:
        if resolved.exists() and not resolved.is_dir():
            raise RecipeError(f"{flag} {given} is a file, not a folder; name a new folder")
        if resolved.is_dir() and any(resolved.iterdir()) and not overwrite:
            raise RecipeError(f"{flag} {given} is a folder that holds files; name a new or empty folder, "
                              "or add --overwrite to replace it")
    elif resolved.is_dir():
        raise RecipeError(f"{flag} {given} is a folder; name a file in it, e.g. {Path(given) / 'out'}")
    parent = resolved.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise RecipeError(f"{flag} {given}: {parent} is not a folder this user can write in; make it first, "
                          "or write somewhere else")
    return resolved


def _temp_beside(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def _special(target: Path) -> bool:
    """A device, pipe or socket (``/dev/stdout``, ``/dev/full``, a FIFO): written in place,
    since renaming a file over it would replace the device itself."""
    return target.exists() and not target.is_file() and not target.is_dir()


@contextmanager
def atomic_file(target: Path, mode: str = "w", **kwargs) -> Iterator:
    """Open a temporary file beside ``target``; on success it replaces ``target``, on any
    failure it is removed and ``target`` keeps what it held."""
    if _special(target):
        with open(target, mode, **kwargs) as f:
            yield f
        return
    tmp = _temp_beside(target)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target`` for a writer that opens files itself (pyarrow)."""
    if _special(target):
        yield target
        return
    tmp = _temp_beside(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A new folder beside ``target`` to fill; on success it takes ``target``'s place (the old
    one is moved aside first and removed only once the new one is in place); on failure it is
    removed and ``target`` is left as it was."""
    tmp = _temp_beside(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    try:
        yield tmp
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
