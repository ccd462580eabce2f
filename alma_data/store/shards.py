"""Writing a table shard by shard: resumable, finished by its manifest.

A shard is written under a temporary name and renamed into place (on an object store,
straight to its name: an object is written whole or not at all), so a shard either exists
whole or not at all. Until a table's manifest exists its shards are the resume points of
the stage that writes it; the manifest's hash covers the configuration, the inputs'
hashes and every shard's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from alma_data import __version__
from alma_data.errors import StoreError
from alma_data.store.files import (MANIFEST, PROGRESS, SHARD_RE, STATE, ManifestError, arrow_filesystem, join,
                                   parse_location, stream_sha256)

if TYPE_CHECKING:
    from alma_data.store.layout import RunFiles, TableRef


def write_shard_file(arrow_fs, dir: str, index: int, rows: pa.Table | list[dict[str, Any]],
                     schema: pa.Schema, remote: bool) -> int:
    """Write ``part-<index>`` of a table. Locally to a temporary name, then renamed into place;
    on an object store straight to its name (an object is written whole or not at all)."""
    if isinstance(rows, list):
        table = pa.Table.from_pylist(rows, schema=schema)
    else:
        table = rows.select(schema.names).cast(schema)
    final = join(dir, f"part-{index:05d}.parquet")
    if remote:
        pq.write_table(table, final, compression="zstd", filesystem=arrow_fs)
        return table.num_rows
    # The process id keeps two writers of one shard (a retried task beside a lost one) apart.
    tmp = join(dir, f".part-{index:05d}.parquet.{os.getpid()}.tmp")
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

    def __init__(self, store: RunFiles, round: int, table: str, *, config_hash: str, schema: pa.Schema,
                 inputs: list[TableRef], meta: dict[str, Any]):
        self.store = store
        self.round = round
        self.table = table
        self._dir = store.table_path(round, table)
        self.dir = store.table_dir(round, table)
        self.schema = schema
        self.inputs = {str(ref): store.input_hash(ref) for ref in inputs}
        self.config_hash = config_hash
        self.meta = meta
        self.started = time.time()
        fs = store.fs
        fs.makedirs(self._dir, exist_ok=True)
        state_key = {"config_hash": config_hash, "inputs": self.inputs}
        state_path = join(self._dir, STATE)
        names = store.names(self._dir)
        try:
            stale = store.read_json_at(state_path) != state_key
        except ManifestError:
            stale = True  # an unreadable state vouches for no shard
        # Shards from another configuration or other inputs are not resume points; a
        # temporary file is a shard some killed writer never finished.
        for name in names:
            if stale or (name.startswith(".") and name.endswith(".tmp")):
                fs.rm_file(join(self._dir, name))
        if stale:
            store.write_json_at(state_path, state_key)

    @property
    def done(self) -> bool:
        return self.store.isfile(join(self._dir, MANIFEST))

    def expect(self, shards: int) -> "TableWriter":
        """Record how many shards the table will have, so ``status`` can show partial progress."""
        self.store.write_json_at(join(self._dir, PROGRESS), {"expected_shards": shards})
        return self

    def shard_path(self, index: int):
        return self.store.as_path(join(self._dir, f"part-{index:05d}.parquet"))

    def done_shards(self) -> set[int]:
        return {int(m.group(1)) for n in self.store.names(self._dir) if (m := SHARD_RE.match(n))}

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
        entries = self.store.entries(self._dir)
        for i in indices:
            name = f"part-{i:05d}.parquet"
            path = join(self._dir, name)
            with self.store.fs.open(path, "rb") as f:
                sha = stream_sha256(f)
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
        self.store.write_json_at(join(self._dir, MANIFEST), manifest)
        return manifest


def write_table(store: RunFiles, round: int, table: str, rows: pa.Table | list[dict[str, Any]], *,
                config_hash: str, schema: pa.Schema, inputs: Iterable[TableRef] = (),
                shard_rows: int = 100_000, **extra: Any) -> dict[str, Any]:
    """Write a small table in one go (seed tables, summaries)."""
    writer = TableWriter(store, round, table, config_hash=config_hash, schema=schema, inputs=list(inputs), meta={})
    table_ = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    for i, start in enumerate(range(0, table_.num_rows, shard_rows)):
        writer.write_shard(i, table_.slice(start, shard_rows))
    return writer.finish(**extra)
