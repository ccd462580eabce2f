"""What executor=ray costs against executor=local on the same sampling and judging work.

    python benchmarks/ray_overhead.py                       # tiny model, 32 prompts x 8 samples, local vs ray
    python benchmarks/ray_overhead.py --workers 1,2 --prompts 32 --n 8 --shard-rows 4

It builds round 1 and round 2's prompts of the tiny recipe once (under ``--dir``, reused
after), then runs round 2's two sharded stages, responses and judgments, from nothing
with each executor in turn and prints their seconds. Ray runs on a local instance with
this machine's CPUs, started before the clock runs (its start is printed apart); a Ray
stage's seconds include starting its engine workers. The local executor runs twice: torch
on all CPUs, and on one thread. A Ray run's rows are compared with the local run whose
torch threads match its workers' CPUs: ``same`` when every shard is byte-identical (the
manifests' hashes agree), else how many response texts and how far the scores differ.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def prepare(store, recipe):
    """Round 1 and round 2's prompts, in-process (made once)."""
    from alma_data.plan import round_stages, stages_of
    from alma_data.round import check_run
    from alma_data.runner import run_stages
    from alma_data.stage import Context

    check_run(store, recipe)
    ctx = Context(store, recipe, quiet=True)
    t0 = time.time()
    run_stages(ctx, round_stages(recipe, 1) + stages_of(recipe, 2, "prompt_candidates", "prompt_clusters", "prompts"))
    if ctx.ran:
        print(f"prepared round 1 and round 2's prompts in {time.time() - t0:.0f}s ({len(ctx.ran)} stages)")


def time_stages(store, recipe) -> dict[str, float]:
    from alma_data.plan import stages_of
    from alma_data.runner import run_stages
    from alma_data.stage import Context

    for table in ("responses", "judgments"):
        shutil.rmtree(store.table_dir(2, table), ignore_errors=True)
    ctx = Context(store, recipe, quiet=True)
    run_stages(ctx, stages_of(recipe, 2, "responses", "judgments"))
    return {rec["stage"]: rec["seconds"] for rec in ctx.records} | {
        f"{rec['stage']} rate": rec["rate"] for rec in ctx.records}


def scored_responses(store) -> list[tuple]:
    import duckdb

    files = lambda t: [str(f) for f in store.files(2, t)]
    return duckdb.sql(f"select response_id, r.response, j.score from read_parquet({files('responses')}) r "
                      f"join read_parquet({files('judgments')}) j using (response_id) order by 1").fetchall()


def compare(store, reference: dict) -> str:
    if all(store.manifest(2, t)["hash"] == h for t, h in reference["hashes"].items()):
        return "same (byte-identical shards)"
    got, want = scored_responses(store), reference["rows"]
    texts = sum(a[1] != b[1] for a, b in zip(got, want))
    diff = max(abs(a[2] - b[2]) for a, b in zip(got, want))
    return f"{texts} response texts differ, largest score difference {diff:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=str(ROOT / "data" / "bench" / "ray"))
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to time, e.g. 1,2")
    ap.add_argument("--prompts", type=int, default=32, help="round 2 prompts (prompts.k)")
    ap.add_argument("--n", type=int, default=8, help="responses per prompt (responses.n)")
    ap.add_argument("--shard-rows", type=int, default=4, help="prompts (sampling) or pairs (judging) a shard")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()

    from alma_data.config import RayConfig, load_recipe
    from alma_data.executors import connect, import_ray
    from alma_data.store import Store

    overrides = {"prompts.k": str(args.prompts), "prompts.candidates": str(4 * args.prompts),
                 "responses.n": str(args.n), "store.shard_rows": str(args.shard_rows),
                 "responses.max_new_tokens": str(args.max_new_tokens)}
    recipe = load_recipe("tiny", overrides)
    store = Store(args.dir, "bench")
    prepare(store, recipe)
    cpus = os.cpu_count() or 1
    print(f"work: {args.prompts} prompts x {args.n} samples = {args.prompts * args.n} responses "
          f"(up to {args.max_new_tokens} new tokens), then {args.prompts * args.n} judgments; "
          f"{args.shard_rows} prompts or pairs a shard; {cpus} CPUs")

    import torch

    results = []
    references = {}
    threads_all = torch.get_num_threads()
    for threads in sorted({threads_all, 1}, reverse=True):
        torch.set_num_threads(threads)
        t = time_stages(store, recipe)
        references[threads] = {"hashes": {tb: store.manifest(2, tb)["hash"] for tb in ("responses", "judgments")},
                               "rows": scored_responses(store)}
        results.append((f"local, torch on {threads} thread{'s' * (threads != 1)}", t, "reference", run_by(store)))
    torch.set_num_threads(threads_all)

    ray = import_ray()
    t0 = time.time()
    connect(ray, RayConfig(), print)
    print(f"ray: local instance up in {time.time() - t0:.1f}s (not counted below)")
    for w in [int(x) for x in args.workers.split(",") if x]:
        recipe.executor = "ray"
        recipe.ray = RayConfig(num_workers=w, num_cpus_per_worker=max(1, cpus // w))
        t = time_stages(store, recipe)
        threads = max(1, cpus // w)
        same = compare(store, references[threads]) if threads in references else "-"
        results.append((f"ray, {w} worker{'s' * (w != 1)} x {threads} CPU{'s' * (threads != 1)}", t,
                        f"{same} (vs local on {threads} thread{'s' * (threads != 1)})", run_by(store)))
    ray.shutdown()

    base = results[0][1]["responses"] + results[0][1]["judgments"]
    print(f"\n{'executor':<26} {'responses':>9} {'judgments':>9} {'total':>7} {'vs local':>8} | {'shards':>7} "
          f"{'engines':>7} {'w.start':>7} {'rest':>6} | rows")
    for name, t, same, by in results:
        total = t["responses"] + t["judgments"]
        part = {k: sum(b[f"{k}_seconds"] / max(1, b["workers"]) for b in by.values())
                for k in ("busy", "engine", "worker_start")}
        rest = total - sum(part.values())
        print(f"{name:<26} {t['responses']:>9.1f} {t['judgments']:>9.1f} {total:>7.1f} {total - base:>+8.1f} | "
              f"{part['busy']:>7.1f} {part['engine']:>7.1f} {part['worker_start']:>7.1f} {rest:>6.1f} | {same}")
    print("seconds; shards, engines (loading them), w.start (Ray: process start and imports before an engine "
          "loads): summed over workers and divided by their number; rest: the other wall time (reading inputs, "
          "dispatch, waiting on the slowest worker, manifests)")
    for name, t, _, _ in results:
        print(f"  {name}: responses {t['responses rate']}; judgments {t['judgments rate']}")


def run_by(store) -> dict[str, dict]:
    return {tb: store.manifest(2, tb)["run_by"] for tb in ("responses", "judgments")}


if __name__ == "__main__":
    main()
