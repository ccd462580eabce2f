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
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from alma_data import __version__
from alma_data.errors import StoreError
from alma_data.store.cache import download_table, keep_local_copy
from alma_data.store.files import MANIFEST, ManifestError, file_sha256, join, write_json_atomic
from alma_data.store.integrity import DamageError, repair_command, require_table
from alma_data.store.layout import RunFiles, TableRef, list_runs  # noqa: F401  (callers take these from here too)
from alma_data.store.lock import build_lock
from alma_data.store.shards import TableWriter

# Files of a checkpoint that say how its training went, not what the model is (its seconds;
# the trainer's pickled arguments, which differ from one training to the next even with the
# same settings): kept and checked, but not part of the checkpoint's hash.
CHECKPOINT_METADATA = frozenset({"training_summary.json", "training_args.bin"})


class Store(RunFiles):
    """One run's folder, local or remote. On a local folder the path helpers (``root``,
    ``table_dir``, ``checkpoint_dir``, ``files``) give ``Path`` objects; on a remote one they
    give strings (paths on its filesystem, URLs for ``files``)."""

    def build_lock(self):
        """Held while a build writes the run (:func:`alma_data.store.lock.build_lock`)."""
        return build_lock(self)

    def upload_dir(self, local: Path, relpath: str) -> None:
        """Copy a local folder into the run (a report made here, for a remote run)."""
        import pyarrow.fs as pafs

        if not self.remote:
            return
        dest = join(self._root, relpath)
        pafs.copy_files(str(local), dest, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.arrow_fs)

    def write_run(self, recipe: dict[str, Any], fingerprint: str) -> None:
        self.fs.makedirs(self._root, exist_ok=True)
        self.write_json_at(join(self._root, "run.json"),
                         {"run": self.run, "recipe": recipe, "fingerprint": fingerprint, "code_version": __version__})

    def shard_paths(self, round: int, table: str) -> list[str]:
        """The shards of a finished table that passes the cheap check (integrity.py): what
        stages and queries read, so none of them reads a damaged table."""
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
        return download_table(self, round, table, self.shard_paths(round, table))

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
               inputs: Iterable[TableRef] = (), meta: dict[str, Any] | None = None) -> TableWriter:
        return TableWriter(self, round, table, config_hash=config_hash, schema=schema,
                           inputs=list(inputs), meta=meta or {})

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
