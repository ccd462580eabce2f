"""This machine's copies of what a remote run holds: checkpoints (what engines and trainers
load) and, for readers that want local files, a table's shards.

A checkpoint of a run in an object store is copied down once into :func:`cache_home`, keyed
by its location and manifest hash, checked file by file as it arrives, and named by that
local copy from then on. A local checkpoint folder is loaded where it lies, after a check
that every file its manifest lists is there with its size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from alma_data.errors import StoreError
from alma_data.store.files import (MANIFEST, arrow_filesystem, cache_home, file_sha256, fsspec_filesystem, join,
                                   parse_location, write_json_atomic)

if TYPE_CHECKING:
    from alma_data.store.layout import RunFiles


def checkpoint_cache_dir(uri: str, manifest_hash: str) -> Path:
    key = hashlib.sha256(uri.split("?", 1)[0].encode()).hexdigest()[:16]
    return cache_home() / "checkpoints" / f"{key}-{manifest_hash}"


def keep_local_copy(trained: Path, location: str, manifest: dict) -> None:
    """Keep a checkpoint just trained here and committed to a remote run as this machine's
    copy of it, so loading it needs no download."""
    write_json_atomic(trained / MANIFEST, manifest)
    dest = checkpoint_cache_dir(location, manifest["hash"])
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(trained, dest)


def local_model_path(ref: str) -> str:
    """A model reference as something ``from_pretrained`` and vLLM load: unchanged unless it is
    a checkpoint of a remote run (``s3://.../checkpoints/NAME?...``), which is copied once into
    :func:`cache_home` (keyed by its manifest hash) and named by that local copy."""
    if "://" not in ref:
        if os.path.isfile(os.path.join(ref, MANIFEST)):
            check_local_checkpoint(Path(ref), what=ref)
        return ref
    import pyarrow.fs as pafs

    loc = parse_location(ref)
    fs = fsspec_filesystem(loc)
    try:
        manifest = json.loads(fs.cat_file(join(loc.base, MANIFEST)))
    except FileNotFoundError:
        raise StoreError(f"{loc.url(loc.base)} is not a finished checkpoint (no {MANIFEST}); "
                         "build the round that trains it") from None
    dest = checkpoint_cache_dir(ref, manifest["hash"])
    if (dest / MANIFEST).is_file():
        try:
            check_local_checkpoint(dest, what=str(dest))
            return str(dest)
        except StoreError:
            shutil.rmtree(dest, ignore_errors=True)  # a damaged local copy: copy it down again
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    pafs.copy_files(loc.base, str(tmp), source_filesystem=arrow_filesystem(loc),
                    destination_filesystem=pafs.LocalFileSystem(), use_threads=True)
    for f in manifest["files"]:
        got = tmp / f["file"]
        if not got.is_file() or got.stat().st_size != f["bytes"]:
            raise StoreError(f"{loc.url(loc.base)}: {f['file']} came down with "
                             f"{got.stat().st_size if got.is_file() else 'no'} bytes, not {f['bytes']}; run again")
        if f.get("sha256") and file_sha256(got) != f["sha256"]:
            raise StoreError(f"{loc.url(loc.base)}: {f['file']} came down with another sha256 than its manifest "
                             "records: the checkpoint in the store is damaged; check it with alma-data verify, "
                             "and a build of its round trains it again")
    write_json_atomic(tmp / MANIFEST, manifest)
    try:
        os.replace(tmp, dest)
    except OSError:
        if not (dest / MANIFEST).is_file():
            raise
        shutil.rmtree(tmp)  # another process on this machine (a second worker) finished the same copy first
    return str(dest)


def check_local_checkpoint(folder: Path, what: str) -> None:
    """Before an engine or trainer loads a checkpoint folder: every file its manifest lists is
    there with its recorded size (no hashing; ``alma-data verify`` hashes)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        listed = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StoreError(f"{folder / MANIFEST}: not a readable checkpoint manifest; a build of the checkpoint's "
                         "round trains it again") from None
    bad = []
    for f in listed:
        p = folder / f["file"]
        if not p.is_file():
            bad.append(f"{p}: missing")
        elif f.get("bytes") is not None and p.stat().st_size != f["bytes"]:
            bad.append(f"{p}: {p.stat().st_size:,} bytes where the manifest recorded {f['bytes']:,}")
    if bad:
        raise StoreError(f"checkpoint {what} is damaged: {'; '.join(bad[:5])}; it is not loaded. A build of its "
                         "round trains it again (alma-data build round=R run=NAME)")


def download_table(store: RunFiles, round: int, table: str, files: list[str]) -> list[Path]:
    """Local copies of a table's shards (``files``, the checked shard paths of
    :meth:`~alma_data.store.run.Store.shard_paths`), kept under the run's local folder by
    manifest hash (a local run's shards are named where they lie)."""
    if not store.remote:
        return [Path(f) for f in files]
    m = store.manifest(round, table)
    folder = store.local_root / f"round={round}" / table / m["hash"]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for shard in m["shards"]:
        dest = folder / shard["file"]
        if not dest.is_file() or file_sha256(dest) != shard["sha256"]:
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            store.fs.get_file(join(store.table_path(round, table), shard["file"]), str(tmp))
            os.replace(tmp, dest)
        out.append(dest)
    return out
