"""Runs on disk: versioned Parquet shards, manifests, and DuckDB views over them.

Layout::

    <runs_dir>/<run>/run.json
    <runs_dir>/<run>/round=R/<table>/part-NNNNN.parquet
    <runs_dir>/<run>/round=R/<table>/_manifest.json
    <runs_dir>/<run>/round=R/checkpoints/<name>/          (a saved model + _manifest.json)

A shard is written under a temporary name and renamed into place, so a shard either
exists whole or not at all. A table is done when its manifest exists; until then its
shards are the resume points of the stage that writes it.
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
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from alma_data import __version__

MANIFEST = "_manifest.json"
STATE = "_state.json"
PROGRESS = "_progress.json"
SHARD_RE = re.compile(r"^part-(\d{5})\.parquet$")


class StoreError(RuntimeError):
    pass


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
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


@dataclass(frozen=True)
class TableRef:
    round: int
    table: str

    def __str__(self) -> str:
        return f"round={self.round}/{self.table}"


class Store:
    def __init__(self, runs_dir: str | Path, run: str):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run):
            raise StoreError(f"run name {run!r} may hold letters, digits, '.', '_' and '-' only")
        if "://" in str(runs_dir):
            # pathlib would quietly turn "s3://b/x" into a local folder "s3:/b/x".
            raise StoreError(
                f"runs_dir={runs_dir}: the store reads and writes a filesystem path (manifests, shards, "
                "checkpoints that engines load); mount the bucket or share a folder over NFS and give its path")
        self.runs_dir = Path(runs_dir)
        self.run = run
        self.root = self.runs_dir / run

    # -- run ----------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    def exists(self) -> bool:
        return self.run_json.is_file()

    def read_run(self) -> dict[str, Any]:
        if not self.exists():
            raise StoreError(
                f"no run {self.run!r} in {self.runs_dir}; runs there: {', '.join(list_runs(self.runs_dir)) or 'none'}"
            )
        return json.loads(self.run_json.read_text())

    def write_run(self, recipe: dict[str, Any], fingerprint: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.run_json,
            {"run": self.run, "recipe": recipe, "fingerprint": fingerprint, "code_version": __version__},
        )

    # -- tables -------------------------------------------------------------------------
    def table_dir(self, round: int, table: str) -> Path:
        return self.root / f"round={round}" / table

    def manifest(self, round: int, table: str) -> dict[str, Any] | None:
        path = self.table_dir(round, table) / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None

    def is_done(self, round: int, table: str) -> bool:
        return (self.table_dir(round, table) / MANIFEST).is_file()

    def files(self, round: int, table: str) -> list[Path]:
        m = self.manifest(round, table)
        if m is None:
            raise StoreError(f"{self.root}/round={round}/{table} is not finished (no {MANIFEST}); run the build to finish it")
        return [self.table_dir(round, table) / s["file"] for s in m["shards"]]

    def read(self, round: int, table: str, columns: list[str] | None = None) -> pa.Table:
        files = self.files(round, table)
        schema = pq.read_schema(files[0]) if files else None
        parts = [pq.read_table(f, columns=columns) for f in files]
        if not parts:
            return pa.table({}) if schema is None else schema.empty_table()
        return pa.concat_tables(parts)

    def done_tables(self) -> dict[str, list[int]]:
        """Finished tables of the run: table name -> rounds that have it."""
        found: dict[str, list[int]] = {}
        for manifest in sorted(self.root.glob(f"round=*/*/{MANIFEST}")):
            table = manifest.parent.name
            if table == "checkpoints":
                continue
            rnd = int(manifest.parent.parent.name.split("=", 1)[1])
            found.setdefault(table, []).append(rnd)
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

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint_dir(self, round: int, name: str) -> Path:
        return self.root / f"round={round}" / "checkpoints" / name

    def checkpoint_done(self, round: int, name: str) -> bool:
        return (self.checkpoint_dir(round, name) / MANIFEST).is_file()

    def checkpoint_manifest_hash(self, round: int, name: str) -> str:
        path = self.checkpoint_dir(round, name) / MANIFEST
        if not path.is_file():
            raise StoreError(f"checkpoint {name!r} of round {round} in run {self.run!r} is not finished")
        return json.loads(path.read_text())["hash"]

    def commit_checkpoint(self, tmp_dir: Path, round: int, name: str, manifest: dict[str, Any]) -> Path:
        final = self.checkpoint_dir(round, name)
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_dir, final)
        files = sorted(p for p in final.rglob("*") if p.is_file() and p.name != MANIFEST)
        manifest = {
            **manifest,
            "checkpoint": name,
            "round": round,
            "code_version": __version__,
            "files": [{"file": str(p.relative_to(final)), "bytes": p.stat().st_size} for p in files],
        }
        manifest["hash"] = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]
        write_json_atomic(final / MANIFEST, manifest)
        return final

    # -- SQL ----------------------------------------------------------------------------
    def connect(self, database: str = ":memory:"):
        """A DuckDB connection with one view per finished table, over all rounds."""
        import duckdb

        con = duckdb.connect(database)
        for table, rounds in self.done_tables().items():
            files = [str(f) for r in rounds for f in self.files(r, table)]
            if not files:
                continue
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(
                f'CREATE OR REPLACE VIEW "{table}" AS SELECT * FROM read_parquet([{listing}], '
                "hive_partitioning = true, union_by_name = true)"
            )
        return con


def list_runs(runs_dir: str | Path) -> list[str]:
    root = Path(runs_dir)
    return sorted(p.parent.name for p in root.glob("*/run.json")) if root.is_dir() else []


def write_shard_file(dir: Path, index: int, rows: pa.Table | list[dict[str, Any]], schema: pa.Schema) -> int:
    """Write ``part-<index>`` of a table: to a temporary name, then renamed into place."""
    if isinstance(rows, list):
        table = pa.Table.from_pylist(rows, schema=schema)
    else:
        table = rows.select(schema.names).cast(schema)
    final = dir / f"part-{index:05d}.parquet"
    # The process id keeps two writers of one shard (a retried task beside a lost one) apart.
    tmp = dir / f".{final.name}.{os.getpid()}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return table.num_rows


@dataclass(frozen=True)
class ShardSink:
    """The picklable part of a :class:`TableWriter` that executors hand to their workers:
    it writes shards into the table's folder by absolute path, and nothing else. The driver
    keeps the writer, which owns the resume state and the manifest."""

    dir: str
    schema: pa.Schema

    def write_shard(self, index: int, rows: pa.Table | list[dict[str, Any]]) -> int:
        folder = Path(self.dir)
        if not folder.is_dir():
            import socket

            raise StoreError(
                f"{self.dir} does not exist on {socket.gethostname()}: workers write shards into the runs folder "
                "directly, so runs_dir must be a filesystem every worker mounts at the same path (e.g. NFS)")
        return write_shard_file(folder, index, rows, self.schema)


class TableWriter:
    """Writes one table shard by shard; resumable; finished by its manifest."""

    def __init__(self, store: Store, round: int, table: str, *, config_hash: str, schema: pa.Schema,
                 inputs: list[TableRef], meta: dict[str, Any]):
        self.store = store
        self.round = round
        self.table = table
        self.dir = store.table_dir(round, table)
        self.schema = schema
        self.inputs = {str(ref): store.input_hash(ref) for ref in inputs}
        self.config_hash = config_hash
        self.meta = meta
        self.started = time.time()
        self.dir.mkdir(parents=True, exist_ok=True)
        state_key = {"config_hash": config_hash, "inputs": self.inputs}
        state_path = self.dir / STATE
        state = json.loads(state_path.read_text()) if state_path.is_file() else None
        if state != state_key:
            # Shards from another configuration or other inputs are not resume points.
            for p in self.dir.iterdir():
                if p.is_file():
                    p.unlink()
            write_json_atomic(state_path, state_key)
        for stale in self.dir.glob(".*.tmp"):
            stale.unlink()

    @property
    def done(self) -> bool:
        return (self.dir / MANIFEST).is_file()

    def expect(self, shards: int) -> "TableWriter":
        """Record how many shards the table will have, so ``status`` can show partial progress."""
        write_json_atomic(self.dir / PROGRESS, {"expected_shards": shards})
        return self

    def shard_path(self, index: int) -> Path:
        return self.dir / f"part-{index:05d}.parquet"

    def done_shards(self) -> set[int]:
        return {int(m.group(1)) for p in self.dir.iterdir() if (m := SHARD_RE.match(p.name))}

    def write_shard(self, index: int, rows: pa.Table | list[dict[str, Any]]) -> int:
        return write_shard_file(self.dir, index, rows, self.schema)

    def sink(self) -> "ShardSink":
        """What a worker process needs to write this table's shards (never its manifest)."""
        return ShardSink(str(self.dir.resolve()), self.schema)

    def finish(self, expected_shards: int | None = None, **extra: Any) -> dict[str, Any]:
        indices = sorted(self.done_shards())
        if expected_shards is not None and indices != list(range(expected_shards)):
            missing = sorted(set(range(expected_shards)) - set(indices))
            raise StoreError(f"{self.dir}: shards {missing[:5]} missing; rerun the build to write them")
        if not indices:  # an empty table still has one (empty) shard, so readers see its schema
            self.write_shard(0, self.schema.empty_table())
            indices = [0]
        shards = []
        for i in indices:
            path = self.shard_path(i)
            shards.append({"file": path.name, "rows": pq.read_metadata(path).num_rows, "sha256": file_sha256(path)})
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
        write_json_atomic(self.dir / MANIFEST, manifest)
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
