"""The data layer's benchmarks: one command prints every figure with its peak memory.

    python benchmarks/run.py --scale paper            # 1M candidates, 50k prompts x 200 = 10M judgments
    python benchmarks/run.py --scale small            # seconds; the same code path
    python benchmarks/run.py --scale paper --only select,dedup   # some sections

Each measured step runs in its own subprocess (``--stage NAME``), and its peak memory is
that process's maximum resident set size (``os.wait4``), so one step's memory never
hides in another's. The SQL steps are the project's own ``sql/*.sql`` files, run by
DuckDB as ``COPY (<file>) TO '<out>.parquet'`` (Parquet in, Parquet out) with
``threads`` and ``memory_limit`` set. Data: ``benchmarks/make_data.py`` (made on first
use under ``--dir``, reused after).

Sections: select (sql/select_picks.sql then best-of-n, pairs and distillation sample, as
the round's stage runs them, beside pandas), dedup (exact), near_dedup (MinHash LSH, with
recall and precision of the planted near-copies; the same with its signature step as
tasks on datatrove's LocalPipelineExecutor, checked to give the same groups; datatrove's
own MinHash where ``--datatrove-python`` names a Python that has it), rebalance (k-means,
then the SQL pick of K clusters), memory (the SQL steps at 1x and 2x input, and the
selection again under each ``--memory-bound`` limit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECTIONS = ["select", "dedup", "near_dedup", "rebalance", "memory", "verify", "polars"]


# -- stages (each runs in a subprocess) -------------------------------------------------------
def duck(work: Path, threads: int, memory_limit: str):
    import duckdb

    con = duckdb.connect()
    (work / "duckdb_tmp").mkdir(parents=True, exist_ok=True)
    con.execute(f"SET threads = {threads}; SET memory_limit = '{memory_limit}'; "
                f"SET temp_directory = '{work / 'duckdb_tmp'}'")
    return con


def copy_sql(con, name: str, out: Path, reference: bool = False, **params) -> dict:
    """``COPY (sql/<name>.sql) TO out`` with the parameters the file mentions; rows and seconds.

    ``reference``: run the file's first, straightforward form (benchmarks/reference_sql/).
    """
    from alma_data.sql import load_sql

    text = ((ROOT / "benchmarks" / "reference_sql" / f"{name}.sql").read_text() if reference else load_sql(name))
    text = text.strip().rstrip(";")
    text = re.sub(r"^\s*--.*$", "", text, flags=re.MULTILINE)
    used = {k: v for k, v in params.items() if f"${k}" in text}
    t0 = time.perf_counter()
    con.execute(f"COPY ({text}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)", used)
    seconds = time.perf_counter() - t0
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
    return {"seconds": round(seconds, 2), "rows": rows}


def stage_select(store, work: Path, args) -> dict:
    """The round's selection as its stage runs it: sql/select_picks.sql into a temp table
    (one pass over responses x judgments, one scan of the texts), then best_of_n.sql,
    pairs.sql and judge_distill.sql, each COPY'd to Parquet. ``select_reference``: the three
    files of benchmarks/reference_sql/ straight from the views."""
    from alma_data.sql import register_parquet
    from alma_data.stages.select import make_picks

    con = duck(work, args.threads, args.memory_limit)
    for table in ("prompts", "responses", "judgments"):
        register_parquet(con, table, store.files(2, table))
    ref = args.stage == "select_reference"
    tag = "ref" if ref else "sql"
    params = {"strategy": "best_vs_random", "seed": 7, "n": 20000}
    t0 = time.perf_counter()
    out = {}
    if not ref:
        make_picks(con, **params)
        out["picks"] = {"seconds": round(time.perf_counter() - t0, 2),
                        "rows": con.execute("SELECT count(*) FROM picks").fetchone()[0]}
    out["best_of_n"] = copy_sql(con, "best_of_n", work / f"{tag}_best_of_n.parquet", ref)
    out["pairs"] = copy_sql(con, "pairs", work / f"{tag}_pairs.parquet", ref, **params)
    out["judge_distill"] = copy_sql(con, "judge_distill", work / f"{tag}_distill.parquet", ref, **params)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["judgments"] = con.execute("SELECT count(*) FROM judgments").fetchone()[0]
    return out


def stage_select_pandas(store, work: Path, args) -> dict:
    """The straightforward pandas version of best-of-n, best-vs-random pairs and the sample."""
    import numpy as np
    import pandas as pd

    t0 = time.perf_counter()
    files = lambda t: [str(f) for f in store.files(2, t)]  # noqa: E731
    prompts = pd.concat([pd.read_parquet(f, columns=["prompt_id", "prompt"]) for f in files("prompts")])
    responses = pd.concat([pd.read_parquet(f, columns=["response_id", "prompt_id", "response"]) for f in files("responses")])
    judgments = pd.concat([pd.read_parquet(f, columns=["response_id", "score", "score_int", "probs"]) for f in files("judgments")])
    df = responses.merge(judgments, on="response_id").merge(prompts, on="prompt_id")
    del responses, judgments
    df = df.sort_values(["prompt_id", "score", "response_id"], ascending=[True, False, True], ignore_index=True)
    df["n"] = df.groupby("prompt_id")["response_id"].transform("size")
    best = df.drop_duplicates("prompt_id")
    best[["prompt_id", "prompt", "response", "score", "response_id", "n"]].assign(source="best_of_n").to_parquet(
        work / "pandas_best_of_n.parquet")
    df["rand"] = pd.util.hash_array(df["response_id"].to_numpy(dtype=object), hash_key="0123456789abcdef")
    top = df.groupby("prompt_id")["score"].transform("max")
    other = df[df["score"] < top].sort_values(["prompt_id", "rand"]).drop_duplicates("prompt_id")
    pairs = best.merge(other, on="prompt_id", suffixes=("", "_rejected"))
    pd.DataFrame({"prompt_id": pairs["prompt_id"], "prompt": pairs["prompt"], "chosen": pairs["response"],
                  "rejected": pairs["response_rejected"], "chosen_score": pairs["score"],
                  "rejected_score": pairs["score_rejected"]}).to_parquet(work / "pandas_pairs.parquet")
    sample = df.nsmallest(20000, "rand")[["response_id", "prompt_id", "prompt", "response", "score", "score_int", "probs"]]
    sample.to_parquet(work / "pandas_distill.parquet")
    return {"seconds": round(time.perf_counter() - t0, 2), "best_of_n": len(best), "pairs": len(pairs),
            "judge_distill": len(sample), "rows": int(len(df)), "pandas": pd.__version__, "numpy": np.__version__}


def stage_select_polars(store, work: Path, args) -> dict:
    """Best-of-n, best-vs-random pairs and the sample as one Polars lazy plan, run on its
    streaming engine: ids and scores first, the texts fetched for the picks only."""
    import polars as pl

    t0 = time.perf_counter()
    scan = lambda t, cols: pl.scan_parquet([str(f) for f in store.files(2, t)]).select(cols)  # noqa: E731
    scored = (scan("responses", ["response_id", "prompt_id"])
              .join(scan("judgments", ["response_id", "score"]), on="response_id")
              .with_columns(h=pl.col("response_id").hash(seed=args.polars_seed)))
    per_prompt = scored.group_by("prompt_id").agg(top=pl.col("score").max(), n=pl.len())
    # the top score, ties to the lowest response_id (the SQL's order)
    best = (scored.join(per_prompt, on="prompt_id").filter(pl.col("score") == pl.col("top"))
            .group_by("prompt_id").agg(response_id=pl.col("response_id").min(), score=pl.col("top").first(),
                                       n=pl.col("n").first()))
    # the partner: the first response in hash order scored below the top
    below = scored.join(per_prompt.select("prompt_id", "top"), on="prompt_id").filter(pl.col("score") < pl.col("top"))
    partner = (below.join(below.group_by("prompt_id").agg(h=pl.col("h").min()), on=["prompt_id", "h"])
               .group_by("prompt_id").agg(rejected_id=pl.col("response_id").min(),
                                          rejected_score=pl.col("score").first()))
    sample = scored.sort(["h", "response_id"]).head(20000).select("response_id")
    best_df, partner_df, sample_df = pl.collect_all([best, partner, sample], engine="streaming")
    picks_t = time.perf_counter() - t0

    wanted = pl.concat([best_df["response_id"], partner_df["rejected_id"], sample_df["response_id"]]).unique()
    texts = (scan("responses", ["response_id", "prompt_id", "response"])
             .join(pl.LazyFrame({"response_id": wanted}), on="response_id", how="semi")
             .join(scan("prompts", ["prompt_id", "prompt"]), on="prompt_id"))
    texts_df = texts.collect(engine="streaming")
    judg_df = (scan("judgments", ["response_id", "score", "score_int", "probs"])
               .join(pl.LazyFrame({"response_id": sample_df["response_id"]}), on="response_id", how="semi")
               .collect(engine="streaming"))
    best_rows = best_df.join(texts_df, on=["prompt_id", "response_id"])
    best_rows.select("prompt_id", "prompt", "response", "score", "response_id", "n").with_columns(
        source=pl.lit("best_of_n")).write_parquet(work / "polars_best_of_n.parquet")
    rejected = texts_df.select(rejected_id="response_id", rejected="response")
    pairs = (best_rows.join(partner_df, on="prompt_id").join(rejected, on="rejected_id")
             .select("prompt_id", "prompt", chosen="response", rejected="rejected", chosen_score="score",
                     rejected_score="rejected_score"))
    pairs.write_parquet(work / "polars_pairs.parquet")
    distill = sample_df.join(texts_df, on="response_id").join(judg_df, on="response_id")
    distill.select("response_id", "prompt_id", "prompt", "response", "score", "score_int", "probs").write_parquet(
        work / "polars_distill.parquet")
    return {"seconds": round(time.perf_counter() - t0, 2), "picks_seconds": round(picks_t, 2),
            "best_of_n": best_rows.height, "pairs": pairs.height, "judge_distill": distill.height,
            "rows": int(best_df["n"].sum()), "polars": pl.__version__}


def stage_dedup(store, work: Path, args) -> dict:
    from alma_data.sql import register_parquet

    con = duck(work, args.threads, args.memory_limit)
    register_parquet(con, "candidates", store.files(2, "prompt_candidates"))
    register_parquet(con, "used_prompts", store.files(1, "prompts"))
    out = copy_sql(con, "dedup_prompts", work / "dedup.parquet")
    out["verdicts"] = dict(con.execute(f"SELECT dedup, count(*) FROM read_parquet('{work / 'dedup.parquet'}') "
                                       "GROUP BY ALL ORDER BY ALL").fetchall())
    return out


def near_dedup_input(store, work: Path, con):
    """The docs near-dedup runs on: round 1's prompts (used), then the exact-unique candidates
    in candidate_id order. Returns (texts, used flags, seed prompt ids, unique candidates)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    unique = con.execute(f"SELECT candidate_id, prompt_id, prompt FROM read_parquet('{work / 'dedup.parquet'}') "
                         "WHERE dedup = 'unique' ORDER BY candidate_id").to_arrow_table()
    used = pq.read_table(store.files(1, "prompts")[0], columns=["prompt_id", "prompt"])
    texts = pa.concat_arrays([used["prompt"].combine_chunks().cast(pa.large_string()),
                              unique["prompt"].combine_chunks().cast(pa.large_string())])
    is_used = np.r_[np.ones(used.num_rows, bool), np.zeros(unique.num_rows, bool)]
    return texts, is_used, used, unique


def stage_near_dedup(store, work: Path, args) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from alma_data import near_dedup as nd

    con = duck(work, args.threads, args.memory_limit)
    texts, is_used, used, unique = near_dedup_input(store, work, con)
    cfg = nd.MinHashConfig()
    t0 = time.perf_counter()
    offsets, sh = nd.shingle_all(texts, cfg.ngram)
    t1 = time.perf_counter()
    sig = nd.minhash(offsets, sh, cfg.num_perm, cfg.seed, workers=args.threads)
    t2 = time.perf_counter()
    result = nd.group_near_copies(con, offsets, sh, sig, is_used, cfg)
    t3 = time.perf_counter()
    pq.write_table(result, work / "near_dedup_docs.parquet")
    docs = result.slice(used.num_rows)
    # grp: the survivor's candidate_id, or "seed:<prompt_id>" for a prompt of round 1
    keys = pa.concat_arrays([pc.binary_join_element_wise("seed:", used["prompt_id"].combine_chunks(), ""),
                             unique["candidate_id"].combine_chunks()])
    out = pa.table({"candidate_id": unique["candidate_id"], "prompt_id": unique["prompt_id"],
                    "grp": keys.take(docs["grp"]), "verdict": docs["verdict"]})
    pq.write_table(out, work / "near_dedup.parquet")
    verdicts = dict(zip(*np.unique(docs["verdict"].to_numpy(zero_copy_only=False), return_counts=True)))
    return {"seconds": round(t3 - t0, 2), "shingles_s": round(t1 - t0, 2), "minhash_s": round(t2 - t1, 2),
            "sql_s": round(t3 - t2, 2), "docs": len(texts), "verdicts": {k: int(v) for k, v in verdicts.items()},
            "bands": cfg.bands, "rows": cfg.rows, "threshold": cfg.threshold}


def stage_near_dedup_datatrove(store, work: Path, args) -> dict:
    """The same near-dedup with its signature step as datatrove tasks (LocalPipelineExecutor,
    ``--dt-tasks`` tasks on ``--dt-workers`` processes), then sql/near_dedup.sql over their shards."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datatrove.executor import LocalPipelineExecutor

    from alma_data import near_dedup as nd
    from alma_data.near_dedup_datatrove import NearDedupSignatures, group_shards

    base = work / "near_dedup_datatrove"
    shutil.rmtree(base, ignore_errors=True)
    con = duck(work, args.threads, args.memory_limit)
    texts, is_used, _, _ = near_dedup_input(store, work, con)
    # the input as the executor's tasks read it: Parquet files (text, used), 100k rows each
    for i in range(0, len(texts), 100_000):
        (base / "input").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": texts[i:i + 100_000], "used": is_used[i:i + 100_000]}),
                       base / "input" / f"part-{i // 100_000:05d}.parquet")
    cfg = nd.MinHashConfig()
    t0 = time.perf_counter()
    LocalPipelineExecutor([NearDedupSignatures(str(base / "input"), str(base / "sigs"), config=cfg, threads=1)],
                          tasks=args.dt_tasks, workers=args.dt_workers, logging_dir=str(base / "logs")).run()
    t1 = time.perf_counter()
    result = group_shards(con, str(base / "sigs"), cfg)
    t2 = time.perf_counter()
    in_process = work / "near_dedup_docs.parquet"
    same = pq.read_table(in_process).equals(result) if in_process.is_file() else None
    return {"seconds": round(t2 - t0, 2), "signatures_s": round(t1 - t0, 2), "sql_s": round(t2 - t1, 2),
            "docs": len(texts), "tasks": args.dt_tasks, "workers": args.dt_workers,
            "same_groups_as_in_process": same}


def stage_kmeans(store, work: Path, args) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.cluster import MiniBatchKMeans

    table = pa.concat_tables([pq.read_table(f, columns=["prompt_id", "prompt", "shots", "embedding"])
                              for f in store.files(2, "prompt_clusters")])
    emb = table["embedding"].combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    k = args.clusters or 2 * args.k
    t0 = time.perf_counter()
    km = MiniBatchKMeans(n_clusters=min(k, table.num_rows), batch_size=8192, max_iter=1, n_init=1, init="random",
                         random_state=0, compute_labels=True)
    labels = km.fit(emb).labels_
    seconds = time.perf_counter() - t0
    pq.write_table(table.drop_columns(["embedding"]).append_column("cluster", pa.array(labels.astype(np.int32))),
                   work / "clustered.parquet")
    return {"seconds": round(seconds, 2), "prompts": table.num_rows, "clusters": int(km.n_clusters),
            "non_empty_clusters": int(len(np.unique(labels))), "dim": int(emb.shape[1])}


def stage_rebalance(store, work: Path, args) -> dict:
    from alma_data.sql import register_parquet

    con = duck(work, args.threads, args.memory_limit)
    # planted: the generator's topics (memory runs); else the k-means labels of the kmeans stage
    register_parquet(con, "clustered", store.files(2, "prompt_clusters") if args.planted_clusters
                     else [work / "clustered.parquet"])
    register_parquet(con, "used_prompts", store.files(1, "prompts") + store.files(2, "prompts"))
    out = copy_sql(con, "rebalance", work / "rebalance.parquet", k=args.k, seed=7)
    out["clustered"] = con.execute("SELECT count(*) FROM clustered").fetchone()[0]
    return out


def stage_datatrove(store, work: Path, args) -> dict:
    """datatrove's four MinHash steps on the same unique candidates (run by --datatrove-python)."""
    script = ROOT / "benchmarks" / "datatrove_minhash.py"
    t0 = time.perf_counter()
    proc = subprocess.run([args.datatrove_python, str(script), str(work / "dedup.parquet"), str(work / "datatrove"),
                           str(args.threads)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": round(time.perf_counter() - t0, 2)}


def stage_verify(store, work: Path, args) -> dict:
    """``alma-data verify``'s full check (sha256 of every shard), then the cheap check every read
    does (listing, sizes, footers) over every table."""
    from alma_data.store.integrity import check_table, verify_run

    report = verify_run(store, threads=args.threads, progress=False)
    t0 = time.perf_counter()
    tables = [(r, t) for t, rounds in store.done_tables().items() for r in rounds]
    cheap = sum(len(check_table(store, r, t)) for r, t in tables)
    cheap_s = time.perf_counter() - t0
    return {"seconds": round(report.seconds, 2), "files": report.files, "bytes": report.bytes,
            "mb_per_s": round(report.mb_per_s, 1), "damaged": len(report.damage), "tables": len(tables),
            "cheap_s": round(cheap_s, 3), "cheap_damaged": cheap,
            "judgments": store.manifest(2, "judgments")["rows"]}


STAGES = {"select": stage_select, "verify": stage_verify, "select_reference": stage_select, "select_pandas": stage_select_pandas,
          "select_polars": stage_select_polars, "dedup": stage_dedup,
          "near_dedup": stage_near_dedup,
          "near_dedup_datatrove": stage_near_dedup_datatrove, "kmeans": stage_kmeans, "rebalance": stage_rebalance,
          "datatrove": stage_datatrove}


# A small process that starts the stage and reports the stage's own peak resident set size
# (os.wait4). It stands between the driver and the stage because Linux carries the memory
# high-water mark of the process that forks over to the exec'd child: a stage forked
# straight from a driver that has just made gigabytes of data would report them as its own.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write("MAXRSS_KIB=%d\\n" % usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


# -- the driver --------------------------------------------------------------------------------
def run_stage(name: str, runs_dir: Path, run: str, work: Path, args, **extra) -> dict:
    """Run one stage in a subprocess; its figures plus its own peak RSS (children included)."""
    cmd = [sys.executable, __file__, "--stage", name, "--dir", str(runs_dir), "--run", run, "--work", str(work),
           "--threads", str(args.threads), "--memory-limit", extra.get("memory_limit") or args.memory_limit, "--k", str(args.k),
           "--clusters", str(args.clusters)]
    if args.datatrove_python:
        cmd += ["--datatrove-python", args.datatrove_python]
    cmd += ["--dt-tasks", str(args.dt_tasks), "--dt-workers", str(args.dt_workers)]
    if extra.get("planted"):
        cmd += ["--planted-clusters"]
    work.mkdir(parents=True, exist_ok=True)
    log_out, log_err = work / f"{name}.out", work / f"{name}.err"
    t0 = time.perf_counter()
    with open(log_out, "w") as fo, open(log_err, "w") as fe:
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *cmd], stdout=fo, stderr=fe,
                              env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"stage {name} failed ({proc.returncode}):\n{log_err.read_text()[-4000:]}")
    out = log_out.read_text()
    maxrss_kib = int(log_err.read_text().rsplit("MAXRSS_KIB=", 1)[1].split()[0])
    result = json.loads(out.strip().splitlines()[-1])
    result["process_wall_s"] = round(wall, 2)
    # Linux reports KiB; a stage that runs its own subprocess (datatrove) reports their peak too
    result["peak_mib"] = max(round(maxrss_kib / 1024, 1), result.get("own_peak_mib", 0))
    return result


def select_split(r: dict) -> str:
    picks = f"picks {r['picks']['seconds']}s, then " if "picks" in r else ""
    return (f"{picks}best_of_n {r['best_of_n']['seconds']}s, pairs {r['pairs']['seconds']}s, "
            f"distill {r['judge_distill']['seconds']}s")


def peak_mib() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def ensure_data(runs_dir: Path, run: str, scale: str, factor: float) -> Path:
    from make_data import make_run

    root = runs_dir / run
    marker = root / "run.json"
    want = f"bench-{scale}-{factor}"
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == want \
            and (root / "round=2" / "judgments" / "_manifest.json").is_file():
        return root
    if root.exists():
        import shutil

        shutil.rmtree(root)
    t0 = time.perf_counter()
    make_run(runs_dir, scale, run, factor, quiet=False)
    print(f"  data {run} ({scale}, x{factor:g}) made in {time.perf_counter() - t0:.0f}s", flush=True)
    return root


def gib(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description="alma-data's data-layer benchmarks")
    ap.add_argument("--scale", choices=["small", "paper"], default="small")
    ap.add_argument("--dir", default=None, help="where the benchmark runs live (default: data/bench/<scale>)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="3GB", help="DuckDB's memory_limit for the SQL steps")
    ap.add_argument("--memory-bound", default="1GB",
                    help="memory section: also run the selection at 1x and 2x under these memory_limits (comma-separated)")
    ap.add_argument("--k", type=int, default=0, help="clusters to pick in rebalancing (default: the scale's prompts)")
    ap.add_argument("--clusters", type=int, default=0, help="k-means clusters (default 2 x k)")
    ap.add_argument("--no-pandas", action="store_true", help="skip the pandas comparison")
    ap.add_argument("--polars-seed", type=int, default=0, help="the seed of Polars' hash order (pairs, sample)")
    ap.add_argument("--reference-sql", action="store_true",
                    help="also time the first, straightforward form of the three selection files")
    ap.add_argument("--datatrove-python", default=None, help="a Python with datatrove installed: time its MinHash too")
    ap.add_argument("--dt-tasks", type=int, default=4,
                    help="near-dedup on datatrove's LocalPipelineExecutor: tasks of the signature step")
    ap.add_argument("--dt-workers", type=int, default=0, help="... and worker processes (default: --threads)")
    ap.add_argument("--json", default=None, help="also write every figure to this file")
    # internal: one stage in this process
    ap.add_argument("--stage", choices=sorted(STAGES))
    ap.add_argument("--run", default="bench")
    ap.add_argument("--work", default=None)
    ap.add_argument("--planted-clusters", action="store_true")
    args = ap.parse_args()
    args.dt_workers = args.dt_workers or args.threads
    if args.stage:
        from alma_data.store import Store

        args.planted_clusters = bool(args.planted_clusters)
        result = STAGES[args.stage](Store(args.dir, args.run), Path(args.work), args)
        result["own_peak_mib"] = peak_mib()
        print(json.dumps(result, default=str))
        return

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_data import SCALES

    scale = SCALES[args.scale]
    args.k = args.k or scale.prompts
    runs_dir = Path(args.dir or ROOT / "data" / "bench" / args.scale)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; known: {SECTIONS}")
    figures: dict = {"scale": args.scale, "threads": args.threads, "memory_limit": args.memory_limit}
    print(f"alma-data benchmarks, scale {args.scale}: {scale.candidates:,} candidates, "
          f"{scale.prompts:,} prompts x {scale.responses_per_prompt} = {scale.prompts * scale.responses_per_prompt:,} "
          f"judgments; DuckDB threads={args.threads}, memory_limit={args.memory_limit}; {os.cpu_count()} cores", flush=True)
    ensure_data(runs_dir, "bench", args.scale, 1.0)
    work = runs_dir / "work"

    def line(label: str, r: dict, extra: str = "") -> None:
        print(f"  {label:<58} {r['seconds']:>8.2f} s   peak {gib(r['peak_mib']):>9}   {extra}", flush=True)

    if "select" in sections:
        print("best-of-n + pairs + distillation sample (sql/select_picks.sql, then best_of_n.sql, pairs.sql, judge_distill.sql)", flush=True)
        r = run_stage("select", runs_dir, "bench", work, args)
        figures["select"] = r
        line(f"DuckDB, {r['judgments']:,} judgments, Parquet -> Parquet", r, select_split(r))
        if args.reference_sql:
            f = run_stage("select_reference", runs_dir, "bench", work, args)
            figures["select_reference"] = f
            line("DuckDB, the straightforward SQL (benchmarks/reference_sql/)", f,
                 f"best_of_n {f['best_of_n']['seconds']}s, pairs {f['pairs']['seconds']}s, distill {f['judge_distill']['seconds']}s")
        if not args.no_pandas:
            p = run_stage("select_pandas", runs_dir, "bench", work, args)
            figures["select_pandas"] = p
            line(f"pandas {p['pandas']}, the same three", p, f"DuckDB is {p['seconds'] / r['seconds']:.1f}x faster")
            figures["select_check"] = check_select(work)
            print(f"  check: {figures['select_check']}", flush=True)
    if "dedup" in sections or "near_dedup" in sections:
        print("exact dedup of prompt candidates (sql/dedup_prompts.sql)", flush=True)
        r = run_stage("dedup", runs_dir, "bench", work, args)
        figures["dedup"] = r
        line(f"{r['rows']:,} parsed candidates vs each other and round 1", r, str(r["verdicts"]))
    if "near_dedup" in sections:
        print("near-dedup: MinHash (word 5-grams) + LSH banding + exact check + components (sql/near_dedup.sql)", flush=True)
        r = run_stage("near_dedup", runs_dir, "bench", work, args)
        figures["near_dedup"] = r
        quality = evaluate_near_dedup(runs_dir / "bench", work / "near_dedup.parquet", "candidate_id", "grp")
        figures["near_dedup_quality"] = quality
        line(f"{r['docs']:,} prompts, {r['bands']}x{r['rows']} hashes", r,
             f"shingles {r['shingles_s']}s, minhash {r['minhash_s']}s, SQL {r['sql_s']}s; {r['verdicts']}")
        print(f"  {'':<58} recall {quality['recall']:.4f}, precision {quality['precision']:.4f} "
              f"({quality['true_pairs']:,} planted pairs at J >= 0.8, {quality['predicted_pairs']:,} grouped pairs); "
              f"removal precision {quality['removal_precision']:.4f} (removed prompts at J >= 0.8 to the kept one)", flush=True)
        try:
            import datatrove  # noqa: F401
        except ImportError:
            print("  near-dedup on datatrove's executors: skipped (pip install 'alma-data[datatrove]')", flush=True)
        else:
            d = run_stage("near_dedup_datatrove", runs_dir, "bench", work, args)
            figures["near_dedup_datatrove"] = d
            line(f"the same, signatures as {d['tasks']} datatrove tasks on {d['workers']} processes", d,
                 f"signatures {d['signatures_s']}s (LocalPipelineExecutor), SQL {d['sql_s']}s over the shards; "
                 f"same groups as in-process: {d['same_groups_as_in_process']}")
        if args.datatrove_python:
            d = run_stage("datatrove", runs_dir, "bench", work, args)
            figures["datatrove"] = d
            dq = evaluate_near_dedup(runs_dir / "bench", work / "datatrove" / "groups.parquet", "candidate_id", "grp")
            figures["datatrove_quality"] = dq
            line("datatrove MinHash pipeline (signatures, buckets, cluster, filter)", d,
                 f"recall {dq['recall']:.4f}, precision {dq['precision']:.4f}; steps {d.get('steps')}")
    if "rebalance" in sections:
        print(f"rebalancing: k-means, then K={args.k:,} clusters with one never-used prompt each (sql/rebalance.sql)", flush=True)
        km = run_stage("kmeans", runs_dir, "bench", work, args)
        figures["kmeans"] = km
        line(f"sklearn MiniBatchKMeans, {km['prompts']:,} x {km['dim']}-dim into {km['clusters']:,} clusters, 1 epoch", km,
             f"{km['non_empty_clusters']:,} clusters used")
        r = run_stage("rebalance", runs_dir, "bench", work, args)
        figures["rebalance"] = r
        line(f"SQL pick from {r['clustered']:,} clustered prompts", r, f"{r['rows']:,} prompts picked")
    if "memory" in sections:
        print("memory-boundedness: the SQL steps at 1x and 2x input", flush=True)
        ensure_data(runs_dir, "bench2x", args.scale, 2.0)
        figures["memory"] = {}
        for label, run in (("1x", "bench"), ("2x", "bench2x")):
            w = runs_dir / f"work_{label}"
            sel = run_stage("select", runs_dir, run, w, args)
            ded = run_stage("dedup", runs_dir, run, w, args)
            reb = run_stage("rebalance", runs_dir, run, w, args, planted=True)
            figures["memory"][label] = {"select": sel, "dedup": ded, "rebalance": reb}
            line(f"{label}: select over {sel['judgments']:,} judgments", sel, select_split(sel))
            line(f"{label}: exact dedup of {ded['rows']:,} candidates", ded)
            line(f"{label}: rebalance over {reb['clustered']:,} clustered (planted clusters)", reb)
        # The same selection under a tighter memory_limit: DuckDB partitions the
        # responses x judgments join to disk past it, so the peak stays at the limit.
        for limit in [x for x in args.memory_bound.split(",") if x.strip()]:
            figures["memory"][f"select_{limit}"] = {}
            for label, run in (("1x", "bench"), ("2x", "bench2x")):
                sel = run_stage("select", runs_dir, run, runs_dir / f"work_{label}", args, memory_limit=limit)
                figures["memory"][f"select_{limit}"][label] = sel
                line(f"{label}: select, memory_limit={limit}", sel, select_split(sel))
    if "polars" in sections:
        print("selection in Polars (one lazy plan on its streaming engine) beside DuckDB, at 1x and 2x input", flush=True)
        ensure_data(runs_dir, "bench2x", args.scale, 2.0)
        figures["polars"] = {}
        for label, run in (("1x", "bench"), ("2x", "bench2x")):
            w = runs_dir / f"work_{label}"
            sel = run_stage("select", runs_dir, run, w, args)
            pol = run_stage("select_polars", runs_dir, run, w, args)
            check = check_select(w, "polars")
            figures["polars"][label] = {"select": sel, "select_polars": pol, "check": check}
            line(f"{label}: DuckDB over {sel['judgments']:,} judgments", sel, select_split(sel))
            line(f"{label}: Polars {pol['polars']}, the same three", pol,
                 f"picks {pol['picks_seconds']}s; {pol['seconds'] / sel['seconds']:.1f}x DuckDB's time")
            print(f"  check: {check}", flush=True)
    if "verify" in sections:
        print(f"alma-data verify: sha256 of every shard against its manifest ({args.threads} threads), "
              "then the cheap check every read does", flush=True)
        r = run_stage("verify", runs_dir, "bench", work, args)
        figures["verify"] = r
        line(f"{r['files']:,} shards, {r['bytes'] / 1e6:,.0f} MB, {r['judgments']:,} judgments", r,
             f"{r['mb_per_s']:,.0f} MB/s, {r['damaged']} damaged; cheap check of {r['tables']} tables "
             f"{r['cheap_s']:.2f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))


def check_select(work: Path, other: str = "pandas") -> dict:
    """The SQL and the other implementation pick the same best responses; no pair ties in
    either; the other's pairs and sample are rows of the input (their hash order differs
    from DuckDB's, so their partners and sample are other rows, checked for what they must be)."""
    import duckdb

    con = duckdb.connect()
    t = lambda name: f"read_parquet('{work / name}.parquet')"  # noqa: E731
    same = con.execute(f"""SELECT count(*) FILTER (WHERE s.response_id = p.response_id), count(*),
                                  (SELECT count(*) FROM {t('sql_best_of_n')}), (SELECT count(*) FROM {t(other + '_best_of_n')})
                          FROM {t('sql_best_of_n')} s JOIN {t(other + '_best_of_n')} p USING (prompt_id)""").fetchone()
    ties = con.execute(f"SELECT count(*) FROM {t('sql_pairs')} WHERE chosen_score <= rejected_score").fetchone()[0]
    other_ties = con.execute(f"SELECT count(*) FROM {t(other + '_pairs')} WHERE chosen_score <= rejected_score").fetchone()[0]
    pairs = con.execute(f"SELECT (SELECT count(*) FROM {t('sql_pairs')}), (SELECT count(*) FROM {t(other + '_pairs')})").fetchone()
    sample = con.execute(f"SELECT count(*), count(DISTINCT response_id) FROM {t(other + '_distill')}").fetchone()
    return {"best_of_n_same_pick": f"{same[0]}/{same[1]} (rows {same[2]} sql, {same[3]} {other})",
            "pairs_rows": f"{pairs[0]} sql, {pairs[1]} {other}",
            "pairs_with_tied_or_inverted_scores": f"{ties} sql, {other_ties} {other}",
            "distill_rows_distinct": f"{sample[0]}/{sample[1]}"}


def evaluate_near_dedup(run_root: Path, result_file: Path, key: str, group: str) -> dict:
    """Recall and precision of grouping over the planted near-copies.

    Truth: pairs of distinct prompts (after exact dedup) within a planted family (an
    original and its near-copies) whose word 5-gram Jaccard, computed here in plain
    Python, is at least 0.8. Predicted: every pair of prompts in one group. Precision
    counts a predicted pair as right when its exact Jaccard is at least 0.8 (so an
    accidental true copy outside the planted families is not held against it).
    """
    import itertools

    import pyarrow.parquet as pq

    from alma_data.ids import normalize_text

    def shingle_set(text: str) -> frozenset:
        w = normalize_text(text).split()
        return frozenset([tuple(w)] if len(w) < 5 else [tuple(w[i:i + 5]) for i in range(len(w) - 4)])

    def jac(a: frozenset, b: frozenset) -> float:
        return len(a & b) / len(a | b) if a or b else 1.0

    truth = pq.read_table(run_root / "_truth.parquet").to_pydict()
    cands = {}
    for f in sorted((run_root / "round=2" / "prompt_candidates").glob("part-*.parquet")):
        t = pq.read_table(f, columns=["candidate_id", "prompt"]).to_pydict()
        cands.update(zip(t["candidate_id"], t["prompt"]))
    for f in sorted((run_root / "round=1" / "prompts").glob("part-*.parquet")):
        t = pq.read_table(f, columns=["prompt_id", "prompt"]).to_pydict()
        cands.update(("seed:" + p, text) for p, text in zip(t["prompt_id"], t["prompt"]))
    res = pq.read_table(result_file, columns=[key, group]).to_pydict()
    grp_of = dict(zip(res[key], res[group]))
    # candidate index -> the surviving doc (candidate_id) of its normal form after exact dedup
    pid_doc = {}
    for cid in res[key]:
        pid_doc[normalize_text(cands[cid])] = cid
    doc_of = [pid_doc.get(normalize_text(cands[c])) for c in truth["candidate_id"]]
    family: dict[int, set] = {}
    for i, (kind, src) in enumerate(zip(truth["kind"], truth["source"])):
        if kind == "near_copy" and doc_of[i] and doc_of[src]:
            family.setdefault(src, {doc_of[src]}).add(doc_of[i])
    cache: dict[str, frozenset] = {}

    def sh(cid: str) -> frozenset:
        if cid not in cache:
            cache[cid] = shingle_set(cands[cid])
        return cache[cid]

    true_pairs = {tuple(sorted(p)) for fam in family.values() for p in itertools.combinations(sorted(fam), 2)
                  if jac(sh(p[0]), sh(p[1])) >= 0.8}
    members: dict = {}
    for cid, g in grp_of.items():
        members.setdefault(g, []).append(cid)
    predicted = {tuple(sorted(p)) for m in members.values() if len(m) > 1 for p in itertools.combinations(m, 2)}
    right = sum(1 for p in predicted if p in true_pairs or jac(sh(p[0]), sh(p[1])) >= 0.8)
    found = sum(1 for p in true_pairs if grp_of.get(p[0]) is not None and grp_of.get(p[0]) == grp_of.get(p[1]))
    planted = sum(len(f) - 1 for f in family.values())
    # Removal precision: a removed prompt is a true near-copy of the one its group kept.
    removed = [(cid, g) for cid, g in grp_of.items() if cid != g]
    kept_right = sum(1 for cid, g in removed if jac(sh(cid), sh(g)) >= 0.8)
    return {"recall": found / len(true_pairs) if true_pairs else 1.0,
            "precision": right / len(predicted) if predicted else 1.0,
            "removal_precision": kept_right / len(removed) if removed else 1.0, "removed": len(removed),
            "true_pairs": len(true_pairs), "predicted_pairs": len(predicted), "planted_near_copies": planted,
            "families": len(family)}


if __name__ == "__main__":
    main()
