"""Near-dedup past one machine: the signature step as a datatrove pipeline step.

The work splits the way ``alma_data.near_dedup`` splits it: shingles and MinHash
signatures in Python, banding, candidate pairs, the exact check and the groups in
DuckDB (``sql/near_dedup.sql``). The first part is the one that grows with the text and
runs in parallel; here it is a datatrove ``PipelineStep``, so any of datatrove's
executors runs it: ``LocalPipelineExecutor`` (tasks and worker processes on one
machine), ``SlurmPipelineExecutor`` or ``RayPipelineExecutor`` (many machines). Each task
takes a contiguous slice of the input rows (its rank's share), computes their rows of
the ``docs`` view and writes them as one Parquet shard. ``group_shards`` then runs the
SQL over all shards, on one machine: its input is a few hundred bytes a prompt.

    from datatrove.executor import LocalPipelineExecutor
    step = NearDedupSignatures("prompts/", "near_dedup/sigs/")      # Parquet: text [, used]
    LocalPipelineExecutor([step], tasks=8, workers=2, logging_dir="near_dedup/logs").run()
    groups = group_shards(duckdb.connect(), "near_dedup/sigs/")     # doc, grp, verdict

Docs are numbered in input order (files sorted by name, then rows), the numbering of
``near_dedup.near_dedup``; with the same config the groups are the same as in-process.
A rerun skips the tasks datatrove marked complete; a shard is written under a temporary
name and renamed, so a killed task leaves no shard that looks finished.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alma_data import near_dedup as nd

try:
    from datatrove.io import DataFolderLike, get_datafolder
    from datatrove.pipeline.base import PipelineStep
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("near-dedup on datatrove's executors needs datatrove: "
                      "pip install 'alma-data[datatrove]' (or pip install 'datatrove>=0.10')") from exc

SHARD_META = b"alma_data.near_dedup"


def _input_files(folder, glob_pattern: str) -> list[str]:
    files = folder.list_files(glob_pattern=glob_pattern)
    if not files:
        raise FileNotFoundError(f"near-dedup input: no file matches {glob_pattern!r} in {folder.path}")
    return files


def _row_counts(folder, files: list[str]) -> list[int]:
    counts = []
    for f in files:
        with folder.open(f, "rb") as fh:
            counts.append(pq.ParquetFile(fh).metadata.num_rows)
    return counts


def rank_slice(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The docs [start, stop) of task ``rank`` of ``world_size``: contiguous, sizes within one."""
    return n * rank // world_size, n * (rank + 1) // world_size


class NearDedupSignatures(PipelineStep):
    """Shingles and MinHash signatures of this task's slice of the input, as a Parquet shard.

    Args:
        input_folder: Parquet files (any fsspec path datatrove takes) with a ``text_key``
            column and, optionally, a boolean ``used_key`` column (prompts of earlier
            rounds: a group that holds one keeps it).
        output_folder: where ``sig-<rank>.parquet`` shards go; ``group_shards`` reads them.
        config: the MinHash settings; ``group_shards`` must get the same.
        threads: numpy threads for the MinHash inside one task (1 when the executor
            already runs a task per core).
    """

    name = "near-dedup signatures"
    type = "Dedup"

    def __init__(self, input_folder: DataFolderLike, output_folder: DataFolderLike,
                 text_key: str = "text", used_key: str | None = "used", glob_pattern: str = "*.parquet",
                 config: nd.MinHashConfig = nd.MinHashConfig(), threads: int = 1):
        super().__init__()
        self.input_folder = get_datafolder(input_folder)
        self.output_folder = get_datafolder(output_folder)
        self.text_key, self.used_key, self.glob_pattern = text_key, used_key, glob_pattern
        self.config, self.threads = config, threads

    def _read_slice(self, start: int, stop: int) -> tuple[pa.Array, np.ndarray]:
        """The text (and used flags) of docs [start, stop), reading only the row groups they touch."""
        files = _input_files(self.input_folder, self.glob_pattern)
        texts, used, offset = [], [], 0
        for f in files:
            with self.input_folder.open(f, "rb") as fh:
                pf = pq.ParquetFile(fh)
                names = pf.schema_arrow.names
                if self.text_key not in names:
                    raise KeyError(f"near-dedup input {f}: no column {self.text_key!r} (columns: {names}); "
                                   "set text_key=")
                columns = [self.text_key] + ([self.used_key] if self.used_key and self.used_key in names else [])
                for g in range(pf.metadata.num_row_groups):
                    rows = pf.metadata.row_group(g).num_rows
                    lo, hi = max(start, offset), min(stop, offset + rows)
                    if lo < hi:
                        part = pf.read_row_group(g, columns=columns).slice(lo - offset, hi - lo)
                        texts.append(part[self.text_key].combine_chunks().cast(pa.large_string()))
                        used.append(part[self.used_key].fill_null(False).to_numpy(zero_copy_only=False)
                                    if len(columns) > 1 else np.zeros(hi - lo, dtype=bool))
                    offset += rows
            if offset >= stop:
                break
        text = pa.concat_arrays(texts) if texts else pa.array([], pa.large_string())
        return text, (np.concatenate(used) if used else np.zeros(0, dtype=bool))

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:  # a step that reads its own input passes anything before it through
            yield from data
        files = _input_files(self.input_folder, self.glob_pattern)
        n = sum(_row_counts(self.input_folder, files))
        start, stop = rank_slice(n, rank, world_size)
        with self.track_time(unit="task"):
            texts, used = self._read_slice(start, stop)
            offsets, sh = nd.shingle_all(texts, self.config.ngram)
            sig = nd.minhash(offsets, sh, self.config.num_perm, self.config.seed, workers=self.threads)
            table = nd.signature_table(offsets, sh, sig, used, self.config, first_doc=start)
        meta = {"first_doc": start, "stop_doc": stop, "docs_total": n, "rank": rank, "world_size": world_size,
                "config": vars(self.config)}
        table = table.replace_schema_metadata({SHARD_META: json.dumps(meta).encode()})
        name, tmp = f"sig-{rank:05d}.parquet", f"sig-{rank:05d}.parquet.tmp"
        with self.output_folder.open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
        self.output_folder.mv(tmp, name)
        self.stat_update("docs", value=stop - start)
        self.stat_update("shingles", value=len(sh))


def shard_files(folder: DataFolderLike, config: nd.MinHashConfig) -> list[str]:
    """The shards of a finished signature run, checked: they cover docs 0..n-1 once, made with ``config``."""
    folder = get_datafolder(folder)
    files = folder.list_files(glob_pattern="sig-*.parquet")
    if not files:
        raise FileNotFoundError(f"no near-dedup signature shards (sig-*.parquet) in {folder.path}; "
                                "run NearDedupSignatures on an executor first")
    spans = []
    for f in files:
        with folder.open(f, "rb") as fh:
            raw = pq.ParquetFile(fh).schema_arrow.metadata or {}
        if SHARD_META not in raw:
            raise ValueError(f"{folder.path}/{f} is not a near-dedup signature shard (no {SHARD_META.decode()} metadata)")
        meta = json.loads(raw[SHARD_META])
        if meta["config"] != vars(config):
            raise ValueError(f"{folder.path}/{f} was made with MinHash settings {meta['config']}, not {vars(config)}; "
                             "group with the same config, or rerun the signatures into an empty folder")
        spans.append((meta["first_doc"], meta["stop_doc"], meta["docs_total"], f))
    spans.sort()
    totals = {s[2] for s in spans}
    expected = 0
    for first, stop, total, f in spans:
        if len(totals) > 1 or first != expected:
            raise ValueError(f"near-dedup shards in {folder.path} do not cover the docs once (expected doc {expected} "
                             f"next, {f} starts at {first}; inputs of {sorted(totals)} docs): a task did not finish or "
                             "two runs share the folder; rerun the executor (finished tasks are skipped) or start afresh")
        expected = stop
    if expected != spans[0][2]:
        raise ValueError(f"near-dedup shards in {folder.path} stop at doc {expected} of {spans[0][2]}: "
                         "a task did not finish; rerun the executor (finished tasks are skipped)")
    return [folder.resolve_paths(f) for _, _, _, f in spans]


def group_shards(con, folder: DataFolderLike, config: nd.MinHashConfig = nd.MinHashConfig()) -> pa.Table:
    """``sql/near_dedup.sql`` over the shards of ``NearDedupSignatures``: (doc, grp, verdict) in doc order."""
    from alma_data.sql import register_parquet

    register_parquet(con, "docs", shard_files(folder, config))
    try:
        return nd.group_docs(con, config)
    finally:
        con.execute("DROP VIEW IF EXISTS docs")
