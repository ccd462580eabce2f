"""Executors: where the shards of a generation stage run (prompt candidates, sampling, judging).

A stage cuts its work into shards and hands them to an executor as jobs: one job per
engine (a checkpoint with a role), each with its shards. Every shard runs the same
per-shard function, ``fn(engine, payload, progress) -> rows``, and its rows are written
as ``part-<index>`` of the stage's table by whoever ran it. The stage keeps the rest:
which shards are done, the manifest, the progress bar and the summary line.

- ``local``: this process opens each job's engine in turn and runs its shards in order.
- ``ray``: actors on a Ray cluster, each holding one engine (one vLLM instance per GPU,
  say), run shards and write them into the runs folder (shared, or an object store)
  themselves. An actor whose checkpoint has no shards left is ended, and one for a
  checkpoint with shards left takes its place where that pays (:class:`WorkerPlan`), so
  every engine lives in a process of its own and frees its memory with it.

The per-shard seeds come from (seed, round, checkpoint, shard), never from the worker or
the order shards run in, so either executor may resume what the other started, and the
rows are byte-identical where the engines compute alike (on CPUs: the same number of
torch threads; float32 sums rounded another way can flip a sampled token now and then).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from alma_data.executors.base import (EngineSpec, Executor, ExecutorError, ShardFn, ShardJob, ShardResult, ShardRun,
                                      run_one_shard, this_process)
from alma_data.executors.local import LocalExecutor
from alma_data.executors.ray_workers import RayExecutor, WorkerPlan, connect, import_ray, worker_env

if TYPE_CHECKING:
    from alma_data.config import Recipe

__all__ = ["EngineSpec", "Executor", "ExecutorError", "LocalExecutor", "RayExecutor", "ShardFn", "ShardJob",
           "ShardResult", "ShardRun", "WorkerPlan", "connect", "import_ray", "make_executor", "run_one_shard",
           "this_process", "worker_env"]


def make_executor(recipe: "Recipe", cache_dir: Path, log: Callable[[str], None] = print):
    """The executor the recipe names (``executor=local|ray``)."""
    if recipe.executor == "ray":
        return RayExecutor(recipe, cache_dir, log)
    return LocalExecutor(recipe, cache_dir, log)

