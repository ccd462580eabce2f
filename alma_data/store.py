"""Runs on disk: versioned Parquet shards, manifests, and DuckDB views over them.

Layout::

    <runs_dir>/<run>/run.json
    <runs_dir>/<run>/round=R/<table>/part-NNNNN.parquet
    <runs_dir>/<run>/round=R/<table>/_manifest.json
    <runs_dir>/<run>/round=R/checkpoints/<name>/          (a saved model + _manifest.json)

A shard is written under a temporary name and renamed into place, so a shard either
exists whole or not at all. A table is done when its manifest exists; until then its
shards are the resume points of the stage that writes it.

``runs_dir`` may also be a URI of any filesystem pyarrow opens (``s3://bucket/runs``,
``gs://...``), with the filesystem's options in its query. There a shard is written
straight to its object (objects are stored whole or not at all), DuckDB reads through an
fsspec wrapper registered on the connection, and checkpoints reach engines and trainers
as local copies (:func:`local_model_path`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from alma_data import __version__

MANIFEST = "_manifest.json"
STATE = "_state.json"
PROGRESS = "_progress.json"
SHARD_RE = re.compile(r"^part-(\d{5})\.parquet$")
# Files of a checkpoint that say how its training went, not what the model is (its seconds;
# the trainer's pickled arguments, which differ from one training to the next even with the
# same settings): kept and checked, but not part of the checkpoint's hash.
CHECKPOINT_METADATA = frozenset({"training_summary.json", "training_args.bin"})


class StoreError(RuntimeError):
    pass


class ManifestError(StoreError):
    """A JSON file of the store (a manifest, run.json) that cannot be read as what it should be."""

    def __init__(self, path: str, url: str, problem: str):
        super().__init__(f"{url}: {problem}")
        self.path, self.problem = path, problem


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return _stream_sha256(f)


def _stream_sha256(f) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cache_home() -> Path:
    """Where this machine keeps local copies of what a remote store holds (checkpoints that
    engines load, the engine request caches, training staging): ``$ALMA_DATA_CACHE`` or
    ``~/.cache/alma-data``."""
    return Path(os.environ.get("ALMA_DATA_CACHE") or Path.home() / ".cache" / "alma-data").expanduser()


# -- filesystems -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """Where a runs folder lives: a local folder, or a folder on any filesystem pyarrow opens
    from a URI (``s3://bucket/runs``, ``gs://...``, ``hdfs://...``, ``abfs://...``). Options of
    the filesystem travel in the URI's query (``s3://b/runs?endpoint_override=host:9000&scheme=http``);
    credentials come from the usual environment of each machine (``AWS_ACCESS_KEY_ID`` ...),
    never from the recipe."""

    given: str
    scheme: str  # "" for a local folder
    base: str  # the folder's path on its filesystem
    query: str

    @property
    def remote(self) -> bool:
        return bool(self.scheme)

    def url(self, path: str) -> str:
        """How DuckDB and users name ``path`` (a path on this filesystem)."""
        return f"{self.scheme}://{path}" if self.remote else path

    def uri(self, path: str) -> str:
        """``path`` as a URI another machine can open, filesystem options included."""
        return self.url(path) + (f"?{self.query}" if self.remote and self.query else "")


def parse_location(runs_dir: str | Path) -> Location:
    text = str(runs_dir)
    if "://" not in text:
        return Location(text, "", os.path.abspath(os.path.expanduser(text)), "")
    scheme, rest = text.split("://", 1)
    path, _, query = rest.partition("?")
    if scheme == "file":
        return Location(text, "", os.path.abspath(path), "")
    if not path.strip("/"):
        raise StoreError(f"runs_dir={text}: name a bucket and folder, e.g. {scheme}://my-bucket/alma-runs")
    return Location(text, scheme, path.rstrip("/"), query)


@lru_cache(maxsize=16)
def _arrow_fs(scheme: str, query: str, bucket: str):
    import pyarrow.fs as pafs

    uri = f"{scheme}://{bucket}" + (f"?{query}" if query else "")
    try:
        fs, _ = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as e:
        raise StoreError(
            f"runs_dir {scheme}://{bucket}...: pyarrow cannot open this filesystem ({e}). Use a local folder or a URI "
            "pyarrow supports (s3://, gs://, hdfs://, abfs://); put filesystem options in the URI's query, e.g. "
            "s3://bucket/runs?endpoint_override=host:9000&scheme=http") from e
    return fs


def arrow_filesystem(loc: Location):
    import pyarrow.fs as pafs

    if not loc.remote:
        return pafs.LocalFileSystem()
    return _arrow_fs(loc.scheme, loc.query, loc.base.split("/", 1)[0])


@lru_cache(maxsize=16)
def _fsspec_class(scheme: str):
    from fsspec.implementations.arrow import ArrowFSWrapper

    # DuckDB routes a URL to a registered fsspec filesystem by the class's protocol.
    return type(f"Arrow_{scheme}_FS", (ArrowFSWrapper,), {"protocol": scheme})


def fsspec_filesystem(loc: Location):
    """The same filesystem through fsspec's interface (listing, globbing, DuckDB registration)."""
    if not loc.remote:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem()
    return _fsspec_class(loc.scheme)(arrow_filesystem(loc))


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p != "")


@dataclass(frozen=True)
class TableRef:
    round: int
    table: str

    def __str__(self) -> str:
        return f"round={self.round}/{self.table}"


class Store:
    """One run's folder, local or remote. On a local folder the path helpers (``root``,
    ``table_dir``, ``checkpoint_dir``, ``files``) give ``Path`` objects; on a remote one they
    give strings (paths on its filesystem, URLs for ``files``)."""

    def __init__(self, runs_dir: str | Path, run: str):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run):
            raise StoreError(f"run name {run!r} may hold letters, digits, '.', '_' and '-' only")
        self.loc = parse_location(runs_dir)
        self.remote = self.loc.remote
        self.runs_dir = runs_dir if self.remote else Path(runs_dir)
        self.run = run
        self.fs = fsspec_filesystem(self.loc)
        self.arrow_fs = arrow_filesystem(self.loc)
        self._root = _join(self.loc.base, run)
        self._intact: set = set()  # tables and checkpoints that passed the cheap check (integrity.py)

    def cli_args(self) -> str:
        """``run=... [runs_dir=...]``: what a command needs to name this run."""
        where = "" if str(self.runs_dir) in ("data/runs", "data/runs/") else f" runs_dir={self.runs_dir}"
        return f"run={self.run}{where}"

    def _out(self, path: str):
        return path if self.remote else Path(path)

    @property
    def root(self):
        return self.url(self._root) if self.remote else Path(self._root)

    @property
    def local_root(self) -> Path:
        """A local folder for what this machine keeps of the run: the run folder itself when it
        is local; for a remote run a folder under :func:`cache_home`."""
        if not self.remote:
            return Path(self._root)
        key = hashlib.sha256(self.loc.url(self.loc.base).encode()).hexdigest()[:12]
        return cache_home() / "runs" / key / self.run

    def url(self, path: str) -> str:
        return self.loc.url(path)

    def where(self) -> str:
        return self.url(self._root)

    @contextmanager
    def build_lock(self) -> Iterator[None]:
        """Held while a build writes the run, so a second build of the same run on this machine
        stops with a message instead of writing over the first. (For a run in an object store
        the lock is in this machine's cache: builds from two machines are not kept apart.)"""
        import fcntl
        import socket

        path = self.local_root / ".build.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StoreError(f"run {self.run!r} ({self.where()}) is being built by {holder}; wait for that build to "
                             "end (or stop it), then run the same command again: it goes on from what is written")
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
            yield
        finally:
            f.close()  # closing the file releases the lock; a killed build's lock goes with its process

    # -- small files ----------------------------------------------------------------------
    def _read_json(self, path: str) -> Any | None:
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            where = f" ({exc.msg} at line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
            raise ManifestError(path, self.url(path), f"not valid JSON{where}") from None

    def _read_manifest(self, path: str, listing: str) -> dict[str, Any] | None:
        """A table's (``listing="shards"``) or checkpoint's (``"files"``) manifest, or None."""
        m = self._read_json(path)
        if m is None:
            return None
        if not (isinstance(m, dict) and isinstance(m.get(listing), list) and isinstance(m.get("hash"), str)
                and all(isinstance(f, dict) and isinstance(f.get("file"), str) for f in m[listing])):
            raise ManifestError(path, self.url(path), f"not a manifest (no '{listing}' list of files and 'hash')")
        return m

    def _entries(self, folder: str) -> dict[str, dict[str, Any]]:
        """The files directly in ``folder``: name -> size and modification time (seconds)."""
        try:
            found = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: _stat(e) for e in found if e["type"] == "file"}

    def _tree(self, folder: str) -> dict[str, dict[str, Any]]:
        """Every file under ``folder``: path relative to it -> size and modification time."""
        try:
            found = self.fs.find(folder, detail=True)
        except FileNotFoundError:
            return {}
        prefix = folder.rstrip("/") + "/"
        return {name[len(prefix):]: _stat(e) for name, e in found.items()
                if e["type"] == "file" and name.startswith(prefix)}

    def _write_json(self, path: str, data: Any) -> None:
        if not self.remote:
            write_json_atomic(Path(path), data)
            return
        # An object store writes an object whole or not at all: no temporary name needed.
        self.fs.pipe_file(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())

    def _isfile(self, path: str) -> bool:
        return self.fs.isfile(path)

    def _names(self, folder: str, kind: str = "file") -> list[str]:
        """Names of the files (or, with ``kind="directory"``, folders) directly in ``folder``;
        none when it does not exist."""
        try:
            entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == kind)

    def read_json(self, relpath: str) -> Any | None:
        """A JSON file of the run (``publish.json`` ...), or None."""
        return self._read_json(_join(self._root, relpath))

    def write_json(self, relpath: str, data: Any) -> None:
        self._write_json(_join(self._root, relpath), data)

    def append_jsonl(self, relpath: str, record: dict[str, Any]) -> None:
        path = _join(self._root, relpath)
        line = json.dumps(record) + "\n"
        if not self.remote:
            with open(path, "a") as f:
                f.write(line)
            return
        try:
            old = self.fs.cat_file(path)
        except FileNotFoundError:
            old = b""
        self.fs.pipe_file(path, old + line.encode())

    def upload_dir(self, local: Path, relpath: str) -> None:
        """Copy a local folder into the run (a report made here, for a remote run)."""
        import pyarrow.fs as pafs

        if not self.remote:
            return
        dest = _join(self._root, relpath)
        pafs.copy_files(str(local), dest, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.arrow_fs)

    # -- run ------------------------------------------------------------------------------
    @property
    def run_json(self):
        return self._out(_join(self._root, "run.json"))

    def exists(self) -> bool:
        return self._isfile(_join(self._root, "run.json"))

    def read_run(self) -> dict[str, Any]:
        info = self._read_json(_join(self._root, "run.json"))
        if info is None:
            raise StoreError(
                f"no run {self.run!r} in {self.loc.given}; runs there: {', '.join(list_runs(self.loc.given)) or 'none'}"
            )
        return info

    def write_run(self, recipe: dict[str, Any], fingerprint: str) -> None:
        self.fs.makedirs(self._root, exist_ok=True)
        self._write_json(_join(self._root, "run.json"),
                         {"run": self.run, "recipe": recipe, "fingerprint": fingerprint, "code_version": __version__})

    def rounds_present(self) -> list[int]:
        """Rounds that have a folder in the run (finished or not)."""
        return sorted(int(m.group(1)) for n in self._names(self._root, "directory")
                      if (m := re.fullmatch(r"round=(\d+)", n)))

    # -- tables ---------------------------------------------------------------------------
    def _table(self, round: int, table: str) -> str:
        return _join(self._root, f"round={round}", table)

    def table_dir(self, round: int, table: str):
        return self._out(self._table(round, table))

    def manifest(self, round: int, table: str) -> dict[str, Any] | None:
        return self._read_manifest(_join(self._table(round, table), MANIFEST), "shards")

    def progress(self, round: int, table: str) -> dict[str, Any] | None:
        try:
            return self._read_json(_join(self._table(round, table), PROGRESS))
        except ManifestError:
            return None  # a hint for status only

    def shard_names(self, round: int, table: str) -> list[str]:
        """The finished shards of a table, done or still being written."""
        return [n for n in self._names(self._table(round, table)) if SHARD_RE.match(n)]

    def is_done(self, round: int, table: str) -> bool:
        return self._isfile(_join(self._table(round, table), MANIFEST))

    def _files(self, round: int, table: str) -> list[str]:
        """The shards of a finished table that passes the cheap check (integrity.py): what
        stages and queries read, so none of them reads a damaged table."""
        from alma_data.integrity import DamageError, repair_command, require_table

        try:
            m = self.manifest(round, table)
        except ManifestError as exc:
            raise DamageError(f"{exc}; nothing reads round={round}/{table} until it is repaired; repair it with: "
                              f"{repair_command(self)}") from None
        if m is None:
            raise StoreError(f"{self.where()}/round={round}/{table} is not finished (no {MANIFEST}); run the build to finish it")
        require_table(self, round, table, m)
        return [_join(self._table(round, table), s["file"]) for s in m["shards"]]

    def files(self, round: int, table: str) -> list:
        """The table's shards: paths (local run) or URLs that :meth:`connect`'s DuckDB reads (remote run)."""
        return [self.url(f) if self.remote else Path(f) for f in self._files(round, table)]

    def read(self, round: int, table: str, columns: list[str] | None = None) -> pa.Table:
        files = self._files(round, table)
        if not files:
            return pa.table({})
        parts = [pq.read_table(f, columns=columns, filesystem=self.arrow_fs) for f in files]
        return pa.concat_tables(parts)

    def download(self, round: int, table: str) -> list[Path]:
        """Local copies of a table's shards (the shards themselves for a local run), for readers
        that want local files, such as ``datasets.load_dataset('parquet', ...)``."""
        files = self._files(round, table)
        if not self.remote:
            return [Path(f) for f in files]
        m = self.manifest(round, table)
        folder = self.local_root / f"round={round}" / table / m["hash"]
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for shard in m["shards"]:
            dest = folder / shard["file"]
            if not dest.is_file() or file_sha256(dest) != shard["sha256"]:
                tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
                self.fs.get_file(_join(self._table(round, table), shard["file"]), str(tmp))
                os.replace(tmp, dest)
            out.append(dest)
        return out

    def done_tables(self) -> dict[str, list[int]]:
        """Finished tables of the run: table name -> rounds that have it."""
        found: dict[str, list[int]] = {}
        for manifest in sorted(self.fs.glob(_join(self._root, "round=*", "*", MANIFEST))):
            parts = manifest.rstrip("/").split("/")
            table, rnd_dir = parts[-2], parts[-3]
            if table == "checkpoints" or not rnd_dir.startswith("round="):
                continue
            found.setdefault(table, []).append(int(rnd_dir.split("=", 1)[1]))
        return {t: sorted(r) for t, r in sorted(found.items())}

    def writer(self, round: int, table: str, *, config_hash: str, schema: pa.Schema,
               inputs: Iterable[TableRef] = (), meta: dict[str, Any] | None = None) -> "TableWriter":
        return TableWriter(self, round, table, config_hash=config_hash, schema=schema,
                           inputs=list(inputs), meta=meta or {})

    def input_hash(self, ref: TableRef) -> str:
        m = self.manifest(ref.round, ref.table)
        if m is None:
            raise StoreError(f"input table {ref} of {self.run} is not finished")
        return m["hash"]

    # -- checkpoints ----------------------------------------------------------------------
    def _checkpoint(self, round: int, name: str) -> str:
        return _join(self._root, f"round={round}", "checkpoints", name)

    def checkpoint_dir(self, round: int, name: str):
        return self._out(self._checkpoint(round, name))

    def checkpoint_manifest(self, round: int, name: str) -> dict[str, Any] | None:
        return self._read_manifest(_join(self._checkpoint(round, name), MANIFEST), "files")

    def checkpoint_done(self, round: int, name: str) -> bool:
        return self._isfile(_join(self._checkpoint(round, name), MANIFEST))

    def checkpoint_manifest_hash(self, round: int, name: str) -> str:
        m = self.checkpoint_manifest(round, name)
        if m is None:
            raise StoreError(f"checkpoint {name!r} of round {round} in run {self.run!r} is not finished")
        return m["hash"]

    def checkpoint_location(self, round: int, name: str) -> str:
        """What engines and trainers load: the folder of a local run, or a URI that
        :func:`local_model_path` turns into a local copy on whichever machine opens it."""
        if self.remote:
            return self.loc.uri(self._checkpoint(round, name))
        return str(Path(self._checkpoint(round, name)).resolve())

    def checkpoint_staging(self, round: int, name: str) -> Path:
        """The local folder a checkpoint is trained into before :meth:`commit_checkpoint`."""
        return self.local_root / f"round={round}" / "checkpoints" / f".{name}.tmp"

    def commit_checkpoint(self, tmp_dir: Path, round: int, name: str, manifest: dict[str, Any]) -> str:
        files = sorted(p for p in tmp_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
        listed = [{"file": str(p.relative_to(tmp_dir)), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                  for p in files]
        # The hash is of what the checkpoint is (how it was made, and its model files' bytes),
        # not of when: a training redone to the same weights (a repair) keeps its hash, so what
        # was built from it stays current. Timings (training seconds) are left out of it.
        content = {k: v for k, v in manifest.items() if k not in ("training", "code_version")}
        model_files = [(f["file"], f["sha256"]) for f in listed if f["file"] not in CHECKPOINT_METADATA]
        manifest = {**manifest, "checkpoint": name, "round": round, "code_version": __version__, "files": listed}
        manifest["hash"] = hashlib.sha256(json.dumps([name, round, content, model_files], sort_keys=True,
                                                     default=str).encode()).hexdigest()[:16]
        final = self._checkpoint(round, name)
        if not self.remote:
            if os.path.exists(final):
                shutil.rmtree(final)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(tmp_dir, final)
            _stamp(listed, self._tree(final))
            write_json_atomic(Path(final) / MANIFEST, manifest)
            return final
        import pyarrow.fs as pafs

        if self.fs.exists(final):
            self.fs.rm(final, recursive=True)
        self.fs.makedirs(final, exist_ok=True)
        pafs.copy_files(str(tmp_dir), final, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.arrow_fs, use_threads=True)
        _stamp(listed, self._tree(final))
        self._write_json(_join(final, MANIFEST), manifest)  # last: the checkpoint exists from here on
        # Keep the trained folder as this machine's copy, so loading it needs no download.
        write_json_atomic(tmp_dir / MANIFEST, manifest)
        location = self.checkpoint_location(round, name)
        dest = _checkpoint_cache(location, manifest["hash"])
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_dir, dest)
        return location

    # -- SQL ------------------------------------------------------------------------------
    def connect(self, database: str = ":memory:", views: bool = True):
        """A DuckDB connection with one view per finished table, over all rounds (every one
        checked first: a damaged table stops it, named). A remote run's filesystem is
        registered on the connection, so its URLs read like local paths. Stages, which
        register views over the tables they read, ask for ``views=False``: a damaged table
        they do not read is no reason to stop them."""
        import duckdb

        con = duckdb.connect(database)
        if self.remote:
            con.register_filesystem(self.fs)
        for table, rounds in (self.done_tables() if views else {}).items():
            files = [str(f) for r in rounds for f in self.files(r, table)]
            if not files:
                continue
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(
                f'CREATE OR REPLACE VIEW "{table}" AS SELECT * FROM read_parquet([{listing}], '
                "hive_partitioning = true, union_by_name = true)"
            )
        return con


def _stamp(listed: list[dict[str, Any]], entries: dict[str, dict[str, Any]]) -> None:
    """Record each file's modification time where it lies, for the cheap check."""
    for f in listed:
        f["mtime"] = entries[f["file"]]["mtime"] if f["file"] in entries else None


def _stat(entry: dict[str, Any]) -> dict[str, Any]:
    """Size and modification time (seconds since the epoch, or None) of an fsspec listing entry:
    a float from the local filesystem, a datetime through pyarrow's."""
    mtime = entry.get("mtime")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return {"size": int(entry["size"]), "mtime": float(mtime) if mtime is not None else None}


def list_runs(runs_dir: str | Path) -> list[str]:
    loc = parse_location(runs_dir)
    fs = fsspec_filesystem(loc)
    found = fs.glob(_join(loc.base, "*", "run.json")) if fs.isdir(loc.base) or loc.remote else []
    return sorted(p.rstrip("/").split("/")[-2] for p in found)


def _checkpoint_cache(uri: str, manifest_hash: str) -> Path:
    key = hashlib.sha256(uri.split("?", 1)[0].encode()).hexdigest()[:16]
    return cache_home() / "checkpoints" / f"{key}-{manifest_hash}"


def local_model_path(ref: str) -> str:
    """A model reference as something ``from_pretrained`` and vLLM load: unchanged unless it is
    a checkpoint of a remote run (``s3://.../checkpoints/NAME?...``), which is copied once into
    :func:`cache_home` (keyed by its manifest hash) and named by that local copy."""
    if "://" not in ref:
        if os.path.isfile(os.path.join(ref, MANIFEST)):
            _check_local_checkpoint(Path(ref), what=ref)
        return ref
    import pyarrow.fs as pafs

    loc = parse_location(ref)
    fs = fsspec_filesystem(loc)
    try:
        manifest = json.loads(fs.cat_file(_join(loc.base, MANIFEST)))
    except FileNotFoundError:
        raise StoreError(f"{loc.url(loc.base)} is not a finished checkpoint (no {MANIFEST}); "
                         "build the round that trains it") from None
    dest = _checkpoint_cache(ref, manifest["hash"])
    if (dest / MANIFEST).is_file():
        try:
            _check_local_checkpoint(dest, what=str(dest))
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


def _check_local_checkpoint(folder: Path, what: str) -> None:
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


def write_shard_file(arrow_fs, dir: str, index: int, rows: pa.Table | list[dict[str, Any]],
                     schema: pa.Schema, remote: bool) -> int:
    """Write ``part-<index>`` of a table. Locally to a temporary name, then renamed into place;
    on an object store straight to its name (an object is written whole or not at all)."""
    if isinstance(rows, list):
        table = pa.Table.from_pylist(rows, schema=schema)
    else:
        table = rows.select(schema.names).cast(schema)
    final = _join(dir, f"part-{index:05d}.parquet")
    if remote:
        pq.write_table(table, final, compression="zstd", filesystem=arrow_fs)
        return table.num_rows
    # The process id keeps two writers of one shard (a retried task beside a lost one) apart.
    tmp = _join(dir, f".part-{index:05d}.parquet.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return table.num_rows


@dataclass(frozen=True)
class ShardSink:
    """The picklable part of a :class:`TableWriter` that executors hand to their workers: it
    writes shards into the table's folder, and nothing else. It carries the runs folder as
    given (a local path, or a URI whose credentials each worker finds in its own environment),
    never an open filesystem. The driver keeps the writer, which owns the resume state and the
    manifest."""

    runs_dir: str
    dir: str
    schema: pa.Schema

    def write_shard(self, index: int, rows: pa.Table | list[dict[str, Any]]) -> int:
        loc = parse_location(self.runs_dir)
        if not loc.remote and not os.path.isdir(self.dir):
            import socket

            raise StoreError(
                f"{self.dir} does not exist on {socket.gethostname()}: workers write shards into the runs folder "
                "directly, so runs_dir must be a filesystem every worker sees: the same mounted path (e.g. NFS) "
                "or an object store URI (e.g. s3://bucket/runs)")
        return write_shard_file(arrow_filesystem(loc), self.dir, index, rows, self.schema, loc.remote)


class TableWriter:
    """Writes one table shard by shard; resumable; finished by its manifest."""

    def __init__(self, store: Store, round: int, table: str, *, config_hash: str, schema: pa.Schema,
                 inputs: list[TableRef], meta: dict[str, Any]):
        self.store = store
        self.round = round
        self.table = table
        self._dir = store._table(round, table)
        self.dir = store.table_dir(round, table)
        self.schema = schema
        self.inputs = {str(ref): store.input_hash(ref) for ref in inputs}
        self.config_hash = config_hash
        self.meta = meta
        self.started = time.time()
        fs = store.fs
        fs.makedirs(self._dir, exist_ok=True)
        state_key = {"config_hash": config_hash, "inputs": self.inputs}
        state_path = _join(self._dir, STATE)
        names = store._names(self._dir)
        try:
            stale = store._read_json(state_path) != state_key
        except ManifestError:
            stale = True  # an unreadable state vouches for no shard
        # Shards from another configuration or other inputs are not resume points; a
        # temporary file is a shard some killed writer never finished.
        for name in names:
            if stale or (name.startswith(".") and name.endswith(".tmp")):
                fs.rm_file(_join(self._dir, name))
        if stale:
            store._write_json(state_path, state_key)

    @property
    def done(self) -> bool:
        return self.store._isfile(_join(self._dir, MANIFEST))

    def expect(self, shards: int) -> "TableWriter":
        """Record how many shards the table will have, so ``status`` can show partial progress."""
        self.store._write_json(_join(self._dir, PROGRESS), {"expected_shards": shards})
        return self

    def shard_path(self, index: int):
        return self.store._out(_join(self._dir, f"part-{index:05d}.parquet"))

    def done_shards(self) -> set[int]:
        return {int(m.group(1)) for n in self.store._names(self._dir) if (m := SHARD_RE.match(n))}

    def write_shard(self, index: int, rows: pa.Table | list[dict[str, Any]]) -> int:
        s = self.store
        return write_shard_file(s.arrow_fs, self._dir, index, rows, self.schema, s.remote)

    def sink(self) -> "ShardSink":
        """What a worker process needs to write this table's shards (never its manifest)."""
        return ShardSink(str(self.store.loc.given) if self.store.remote else self.store.loc.base,
                         self._dir, self.schema)

    def finish(self, expected_shards: int | None = None, **extra: Any) -> dict[str, Any]:
        indices = sorted(self.done_shards())
        if expected_shards is not None and indices != list(range(expected_shards)):
            missing = sorted(set(range(expected_shards)) - set(indices))
            raise StoreError(f"{self.store.url(self._dir)}: shards {missing[:5]} missing; rerun the build to write them")
        if not indices:  # an empty table still has one (empty) shard, so readers see its schema
            self.write_shard(0, self.schema.empty_table())
            indices = [0]
        shards = []
        # Size and modification time let every later read check the shard without hashing it.
        entries = self.store._entries(self._dir)
        for i in indices:
            name = f"part-{i:05d}.parquet"
            path = _join(self._dir, name)
            with self.store.fs.open(path, "rb") as f:
                sha = _stream_sha256(f)
            with self.store.arrow_fs.open_input_file(path) as f:
                n = pq.read_metadata(f).num_rows
            shards.append({"file": name, "rows": n, "sha256": sha, "bytes": entries[name]["size"],
                           "mtime": entries[name]["mtime"]})
        manifest = {
            "run": self.store.run,
            "round": self.round,
            "table": self.table,
            "config_hash": self.config_hash,
            "inputs": self.inputs,
            "shards": shards,
            "rows": sum(s["rows"] for s in shards),
            "columns": {f.name: str(f.type) for f in self.schema},
            "code_version": __version__,
            "started": self.started,
            "finished": time.time(),
            "seconds": round(time.time() - self.started, 3),
            **self.meta,
            **extra,
        }
        manifest["hash"] = hashlib.sha256(
            json.dumps([self.config_hash, self.inputs, [s["sha256"] for s in shards]]).encode()
        ).hexdigest()[:16]
        self.store._write_json(_join(self._dir, MANIFEST), manifest)
        return manifest


def write_table(store: Store, round: int, table: str, rows: pa.Table | list[dict[str, Any]], *,
                config_hash: str, schema: pa.Schema, inputs: Iterable[TableRef] = (),
                shard_rows: int = 100_000, **extra: Any) -> dict[str, Any]:
    """Write a small table in one go (seed tables, summaries)."""
    writer = store.writer(round, table, config_hash=config_hash, schema=schema, inputs=inputs)
    table_ = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    for i, start in enumerate(range(0, table_.num_rows, shard_rows)):
        writer.write_shard(i, table_.slice(start, shard_rows))
    return writer.finish(**extra)
