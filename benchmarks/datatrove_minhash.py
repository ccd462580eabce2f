"""datatrove's MinHash near-dedup on the benchmark's unique candidates, for comparison.

    PYTHON_WITH_DATATROVE benchmarks/datatrove_minhash.py DEDUP_PARQUET OUT_DIR THREADS

Needs ``pip install "datatrove[io]" spacy "xxhash<4"`` (kept out of the project's own
dependencies: this is a yardstick, and datatrove's executors are the way to run the same
four steps past one machine). Runs datatrove's four steps with its local executor and its
default MinHash settings (word 5-grams, 14 buckets x 8 hashes, no exact check of the
candidate pairs), then writes OUT_DIR/groups.parquet: candidate_id, grp (the candidate
its group kept), the same form ``benchmarks/run.py`` scores our near-dedup in.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path


def main() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import ParquetReader

    dedup_file, out, threads = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(dedup_file, columns=["candidate_id", "prompt", "dedup"])
    table = table.filter(pa.compute.equal(table["dedup"], "unique")).sort_by("candidate_id")
    inputs = out / "input"
    inputs.mkdir(exist_ok=True)
    # one input file per task, so the signature and filter steps run on every core
    n = table.num_rows
    per = -(-n // threads)
    files = []
    for i in range(threads):
        part = table.slice(i * per, per)
        pq.write_table(pa.table({"id": part["candidate_id"], "text": part["prompt"]}), inputs / f"part-{i:05d}.parquet")
        files.append(part["candidate_id"].to_pylist())
    config = MinhashConfig()
    steps = {}

    def reader():
        return ParquetReader(str(inputs), glob_pattern="*.parquet")

    logs = out / "logs"
    runs = [
        ("signatures", [reader(), MinhashDedupSignature(output_folder=str(out / "sigs"), config=config)], threads),
        ("buckets", [MinhashDedupBuckets(input_folder=str(out / "sigs"), output_folder=str(out / "buckets"), config=config)],
         config.num_buckets),
        ("cluster", [MinhashDedupCluster(input_folder=str(out / "buckets"), output_folder=str(out / "remove"),
                                         config=config, save_cluster_id=True)], 1),
        ("filter", [reader(), MinhashDedupFilter(input_folder=str(out / "remove"))], threads),
    ]
    t0 = time.perf_counter()
    for name, pipeline, tasks in runs:
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=threads, logging_dir=str(logs / name)).run()
        steps[name] = round(time.perf_counter() - t, 2)
    seconds = time.perf_counter() - t0
    # groups from the cluster step's files: per rank, (doc index in the rank's file, cluster id),
    # and the docs it removed; the one member of a cluster not removed is the one kept
    ranks = []
    for rank in range(len(files)):
        path, rpath = out / "remove" / f"{rank:06d}.clusters", out / "remove" / f"{rank:06d}.remove"
        cluster_of = dict(struct.iter_unpack("<II", path.read_bytes())) if path.is_file() else {}
        removed = {d for (d,) in struct.iter_unpack("<I", rpath.read_bytes())} if rpath.is_file() else set()
        ranks.append((cluster_of, removed))
    kept = {c: files[rank][doc] for rank, (cluster_of, removed) in enumerate(ranks)
            for doc, c in cluster_of.items() if doc not in removed}
    ids, grp = [], []
    for rank, (cluster_of, _) in enumerate(ranks):
        for doc, cid in enumerate(files[rank]):
            ids.append(cid)
            grp.append(kept.get(cluster_of[doc], cid) if doc in cluster_of else cid)
    pq.write_table(pa.table({"candidate_id": ids, "grp": grp}), out / "groups.parquet")
    removed_n = sum(len(r[1]) for r in ranks)
    print(json.dumps({"seconds": round(seconds, 2), "steps": steps, "docs": n, "removed": removed_n,
                      "buckets": config.num_buckets, "hashes_per_bucket": config.hashes_per_bucket}))


if __name__ == "__main__":
    main()
