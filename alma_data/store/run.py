"""One run's folder: run.json, its tables' manifests and shards, its checkpoints, DuckDB views.

Layout::

    <runs_dir>/<run>/run.json
    <runs_dir>/<run>/round=R/<table>/part-NNNNN.parquet
    <runs_dir>/<run>/round=R/<table>/_manifest.json
    <runs_dir>/<run>/round=R/checkpoints/<name>/          (a saved model + _manifest.json)

A table is done when its manifest exists. On an object store DuckDB reads through an fsspec
wrapper registered on the connection, and checkpoints reach engines and trainers as local
copies (:mod:`alma_data.store.cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from alma_data import __version__
from alma_data.errors import StoreError
from alma_data.store.cache import keep_local_copy
from alma_data.store.files import (DEFAULT_RUNS_DIR, MANIFEST, PROGRESS, SHARD_RE, ManifestError, arrow_filesystem, cache_home,
                                   file_sha256, fsspec_filesystem, join, parse_location, stat_entry,
                                   write_json_atomic)

if TYPE_CHECKING:
    from alma_data.store.shards import TableWriter

# Files of a checkpoint that say how its training went, not what the model is (its seconds;
# the trainer's pickled arguments, which differ from one training to the next even with the
# same settings): kept and checked, but not part of the checkpoint's hash.
CHECKPOINT_METADATA = frozenset({"training_summary.json", "training_args.bin"})


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
        self._root = join(self.loc.base, run)
        self.intact: set = set()  # tables and checkpoints that passed the cheap check (integrity.py)

    def cli_args(self) -> str:
        """``run=... [runs_dir=...]``: what a command needs to name this run."""
        where = "" if str(self.runs_dir).rstrip("/") == DEFAULT_RUNS_DIR else f" runs_dir={self.runs_dir}"
        return f"run={self.run}{where}"

    def as_path(self, path: str):
        return path if self.remote else Path(path)

    @property
    def path(self) -> str:
        """The run folder's path on its filesystem (what :meth:`url` and the fs take)."""
        return self._root

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

    def build_lock(self):
        """Held while a build writes the run (:func:`alma_data.store.lock.build_lock`)."""
        from alma_data.store.lock import build_lock

        return build_lock(self)

    # -- small files ----------------------------------------------------------------------
    def read_json_at(self, path: str) -> Any | None:
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            where = f" ({exc.msg} at line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
            raise ManifestError(path, self.url(path), f"not valid JSON{where}") from None

    def read_manifest_at(self, path: str, listing: str) -> dict[str, Any] | None:
        """A table's (``listing="shards"``) or checkpoint's (``"files"``) manifest, or None."""
        m = self.read_json_at(path)
        if m is None:
            return None
        if not (isinstance(m, dict) and isinstance(m.get(listing), list) and isinstance(m.get("hash"), str)
                and all(isinstance(f, dict) and isinstance(f.get("file"), str) for f in m[listing])):
            raise ManifestError(path, self.url(path), f"not a manifest (no '{listing}' list of files and 'hash')")
        return m

    def entries(self, folder: str) -> dict[str, dict[str, Any]]:
        """The files directly in ``folder``: name -> size and modification time (seconds)."""
        try:
            found = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: stat_entry(e) for e in found if e["type"] == "file"}

    def tree(self, folder: str) -> dict[str, dict[str, Any]]:
        """Every file under ``folder``: path relative to it -> size and modification time."""
        try:
            found = self.fs.find(folder, detail=True)
        except FileNotFoundError:
            return {}
        prefix = folder.rstrip("/") + "/"
        return {name[len(prefix):]: stat_entry(e) for name, e in found.items()
                if e["type"] == "file" and name.startswith(prefix)}

    def write_json_at(self, path: str, data: Any) -> None:
        if not self.remote:
            write_json_atomic(Path(path), data)
            return
        # An object store writes an object whole or not at all: no temporary name needed.
        self.fs.pipe_file(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())

    def isfile(self, path: str) -> bool:
        return self.fs.isfile(path)

    def names(self, folder: str, kind: str = "file") -> list[str]:
        """Names of the files (or, with ``kind="directory"``, folders) directly in ``folder``;
        none when it does not exist."""
        try:
            entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == kind)

    def read_json(self, relpath: str) -> Any | None:
        """A JSON file of the run (``publish.json`` ...), or None."""
        return self.read_json_at(join(self._root, relpath))

    def write_json(self, relpath: str, data: Any) -> None:
        self.write_json_at(join(self._root, relpath), data)

    def append_jsonl(self, relpath: str, record: dict[str, Any]) -> None:
        path = join(self._root, relpath)
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
        dest = join(self._root, relpath)
        pafs.copy_files(str(local), dest, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.arrow_fs)

    # -- run ------------------------------------------------------------------------------
    @property
    def run_json(self):
        return self.as_path(join(self._root, "run.json"))

    def exists(self) -> bool:
        return self.isfile(join(self._root, "run.json"))

    def read_run(self) -> dict[str, Any]:
        info = self.read_json_at(join(self._root, "run.json"))
        if info is None:
            raise StoreError(
                f"no run {self.run!r} in {self.loc.given}; runs there: {', '.join(list_runs(self.loc.given)) or 'none'}"
            )
        return info

    def write_run(self, recipe: dict[str, Any], fingerprint: str) -> None:
        self.fs.makedirs(self._root, exist_ok=True)
        self.write_json_at(join(self._root, "run.json"),
                         {"run": self.run, "recipe": recipe, "fingerprint": fingerprint, "code_version": __version__})

    def rounds_present(self) -> list[int]:
        """Rounds that have a folder in the run (finished or not)."""
        return sorted(int(m.group(1)) for n in self.names(self._root, "directory")
                      if (m := re.fullmatch(r"round=(\d+)", n)))

    # -- tables ---------------------------------------------------------------------------
    def table_path(self, round: int, table: str) -> str:
        return join(self._root, f"round={round}", table)

    def table_dir(self, round: int, table: str):
        return self.as_path(self.table_path(round, table))

    def manifest(self, round: int, table: str) -> dict[str, Any] | None:
        return self.read_manifest_at(join(self.table_path(round, table), MANIFEST), "shards")

    def progress(self, round: int, table: str) -> dict[str, Any] | None:
        try:
            return self.read_json_at(join(self.table_path(round, table), PROGRESS))
        except ManifestError:
            return None  # a hint for status only

    def shard_names(self, round: int, table: str) -> list[str]:
        """The finished shards of a table, done or still being written."""
        return [n for n in self.names(self.table_path(round, table)) if SHARD_RE.match(n)]

    def is_done(self, round: int, table: str) -> bool:
        return self.isfile(join(self.table_path(round, table), MANIFEST))

    def shard_paths(self, round: int, table: str) -> list[str]:
        """The shards of a finished table that passes the cheap check (integrity.py): what
        stages and queries read, so none of them reads a damaged table."""
        from alma_data.store.integrity import DamageError, repair_command, require_table

        try:
            m = self.manifest(round, table)
        except ManifestError as exc:
            raise DamageError(f"{exc}; nothing reads round={round}/{table} until it is repaired; repair it with: "
                              f"{repair_command(self)}") from None
        if m is None:
            raise StoreError(f"{self.where()}/round={round}/{table} is not finished (no {MANIFEST}); run the build to finish it")
        require_table(self, round, table, m)
        return [join(self.table_path(round, table), s["file"]) for s in m["shards"]]

    def files(self, round: int, table: str) -> list:
        """The table's shards: paths (local run) or URLs that :meth:`connect`'s DuckDB reads (remote run)."""
        return [self.url(f) if self.remote else Path(f) for f in self.shard_paths(round, table)]

    def read(self, round: int, table: str, columns: list[str] | None = None) -> pa.Table:
        files = self.shard_paths(round, table)
        if not files:
            return pa.table({})
        parts = [pq.read_table(f, columns=columns, filesystem=self.arrow_fs) for f in files]
        return pa.concat_tables(parts)

    def download(self, round: int, table: str) -> list[Path]:
        """Local copies of a table's shards (the shards themselves for a local run), for readers
        that want local files, such as ``datasets.load_dataset('parquet', ...)``."""
        from alma_data.store.cache import download_table

        return download_table(self, round, table)

    def done_tables(self) -> dict[str, list[int]]:
        """Finished tables of the run: table name -> rounds that have it."""
        found: dict[str, list[int]] = {}
        for manifest in sorted(self.fs.glob(join(self._root, "round=*", "*", MANIFEST))):
            parts = manifest.rstrip("/").split("/")
            table, rnd_dir = parts[-2], parts[-3]
            if table == "checkpoints" or not rnd_dir.startswith("round="):
                continue
            found.setdefault(table, []).append(int(rnd_dir.split("=", 1)[1]))
        return {t: sorted(r) for t, r in sorted(found.items())}

    def writer(self, round: int, table: str, *, config_hash: str, schema: pa.Schema,
               inputs: Iterable[TableRef] = (), meta: dict[str, Any] | None = None) -> "TableWriter":
        from alma_data.store.shards import TableWriter

        return TableWriter(self, round, table, config_hash=config_hash, schema=schema,
                           inputs=list(inputs), meta=meta or {})

    def input_hash(self, ref: TableRef) -> str:
        m = self.manifest(ref.round, ref.table)
        if m is None:
            raise StoreError(f"input table {ref} of {self.run} is not finished")
        return m["hash"]

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint_path(self, round: int, name: str) -> str:
        return join(self._root, f"round={round}", "checkpoints", name)

    def checkpoint_dir(self, round: int, name: str):
        return self.as_path(self.checkpoint_path(round, name))

    def checkpoint_manifest(self, round: int, name: str) -> dict[str, Any] | None:
        return self.read_manifest_at(join(self.checkpoint_path(round, name), MANIFEST), "files")

    def checkpoint_done(self, round: int, name: str) -> bool:
        return self.isfile(join(self.checkpoint_path(round, name), MANIFEST))

    def checkpoint_manifest_hash(self, round: int, name: str) -> str:
        m = self.checkpoint_manifest(round, name)
        if m is None:
            raise StoreError(f"checkpoint {name!r} of round {round} in run {self.run!r} is not finished")
        return m["hash"]

    def checkpoint_location(self, round: int, name: str) -> str:
        """What engines and trainers load: the folder of a local run, or a URI that
        :func:`local_model_path` turns into a local copy on whichever machine opens it."""
        if self.remote:
            return self.loc.uri(self.checkpoint_path(round, name))
        return str(Path(self.checkpoint_path(round, name)).resolve())

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
        final = self.checkpoint_path(round, name)
        if not self.remote:
            if os.path.exists(final):
                shutil.rmtree(final)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(tmp_dir, final)
            _stamp(listed, self.tree(final))
            write_json_atomic(Path(final) / MANIFEST, manifest)
            return final
        import pyarrow.fs as pafs

        if self.fs.exists(final):
            self.fs.rm(final, recursive=True)
        self.fs.makedirs(final, exist_ok=True)
        pafs.copy_files(str(tmp_dir), final, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.arrow_fs, use_threads=True)
        _stamp(listed, self.tree(final))
        self.write_json_at(join(final, MANIFEST), manifest)  # last: the checkpoint exists from here on
        location = self.checkpoint_location(round, name)
        keep_local_copy(tmp_dir, location, manifest)
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


def list_runs(runs_dir: str | Path) -> list[str]:
    loc = parse_location(runs_dir)
    fs = fsspec_filesystem(loc)
    found = fs.glob(join(loc.base, "*", "run.json")) if fs.isdir(loc.base) or loc.remote else []
    return sorted(p.rstrip("/").split("/")[-2] for p in found)
