"""The store's shared primitives: one run's folder, its paths, JSON files, manifests and file
listings (:class:`RunFiles`), and :class:`TableRef`. The store's other parts (shards, cache,
integrity, lock) stand on this module, and :class:`alma_data.store.run.Store`, which adds what
needs them (checked reads, writers, checkpoints, DuckDB views), stands on them all; nothing
here imports them.

Layout::

    <runs_dir>/<run>/run.json
    <runs_dir>/<run>/round=R/<table>/part-NNNNN.parquet
    <runs_dir>/<run>/round=R/<table>/_manifest.json
    <runs_dir>/<run>/round=R/checkpoints/<name>/          (a saved model + _manifest.json)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alma_data.errors import StoreError
from alma_data.store.files import (DEFAULT_RUNS_DIR, MANIFEST, PROGRESS, SHARD_RE, ManifestError, arrow_filesystem,
                                   cache_home, fsspec_filesystem, join, parse_location, stat_entry, write_json_atomic)


@dataclass(frozen=True)
class TableRef:
    round: int
    table: str

    def __str__(self) -> str:
        return f"round={self.round}/{self.table}"


class RunFiles:
    """One run's folder, local or remote: where each table and checkpoint lies, its JSON files,
    manifests and listings. On a local folder the path helpers (``root``, ``table_dir``,
    ``checkpoint_dir``) give ``Path`` objects; on a remote one they give strings (paths on its
    filesystem)."""

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

    def read_jsonl(self, relpath: str) -> list[dict[str, Any]]:
        """The records of a JSON-lines file of the run (``builds.jsonl``), oldest first; none when
        it does not exist. A line that is not a JSON object (one cut short by a kill) is left out."""
        try:
            data = self.fs.cat_file(join(self._root, relpath))
        except FileNotFoundError:
            return []
        out = []
        for line in data.decode(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

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


def list_runs(runs_dir: str | Path) -> list[str]:
    loc = parse_location(runs_dir)
    fs = fsspec_filesystem(loc)
    found = fs.glob(join(loc.base, "*", "run.json")) if fs.isdir(loc.base) or loc.remote else []
    return sorted(p.rstrip("/").split("/")[-2] for p in found)
