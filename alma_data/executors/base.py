"""What every executor shares: the jobs and shards it is handed, what it hands back, and
the one interface (:class:`Executor`) a stage runs its shards through."""

from __future__ import annotations

import abc
import dataclasses
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from alma_data.engines import EngineStats
from alma_data.errors import AlmaError

if TYPE_CHECKING:
    from alma_data.config import Recipe
    from alma_data.store import TableWriter

ShardFn = Callable[[Any, Any, Any], list]
"""``fn(engine, payload, progress) -> rows`` for one shard; a module-level function, so
that Ray can ship it by reference."""


class ExecutorError(AlmaError, RuntimeError):
    """A shard could not be run; the message names the shard and what to do."""


@dataclass(frozen=True)
class EngineSpec:
    """Which engine a job needs: one checkpoint in one role (``sample`` or ``score``)."""

    model_path: str
    name: str = "base"
    round: int | None = None
    role: str = "sample"

    def label(self) -> str:
        return self.name if self.round is None else f"round={self.round}/{self.name}"


@dataclass
class ShardJob:
    engine: EngineSpec
    shards: list[tuple[int, Any]]
    """(shard index, payload) pairs still to run."""


@dataclass
class ShardResult:
    index: int
    rows: int
    stats: EngineStats
    """This shard's share of its engine's counters."""
    seconds: float
    worker: str
    engine_seconds: float = 0.0
    """Opening the engine, on the shard that opened it."""


@dataclass
class ShardRun:
    """What an executor did for one stage: its results and its wall time."""

    results: list[ShardResult] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0
    executor: str = "local"
    worker_start_seconds: float = 0.0
    """Ray: from asking for a worker to its first shard, less that shard's work and engine
    load (process start, imports), summed over workers."""

    @property
    def stats(self) -> EngineStats:
        total = EngineStats()
        for r in self.results:
            for f in dataclasses.fields(EngineStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(r.stats, f.name))
        return total

    def provenance(self) -> dict[str, Any]:
        """For the table's manifest: who wrote the shards of this invocation (earlier ones kept theirs)."""
        return {"executor": self.executor, "shards": len(self.results), "workers": self.workers,
                "processes": sorted({r.worker for r in self.results}), "seconds": round(self.seconds, 3),
                "busy_seconds": round(sum(r.seconds for r in self.results), 3),
                "engine_seconds": round(sum(r.engine_seconds for r in self.results), 3),
                "worker_start_seconds": round(self.worker_start_seconds, 3)}

    def rate(self, what: str) -> str:
        """Throughput for the stage's summary line: ``tokens`` or ``pairs``."""
        s = self.stats
        count, busy = (s.generated_tokens, s.generate_seconds) if what == "tokens" else (s.scored, s.score_seconds)
        unit = "tok/s" if what == "tokens" else "pairs/s"
        if not busy:
            return ""
        if self.executor == "local":
            return f"{count / busy:.0f} {unit}" if what == "tokens" else f"{count / busy:.2f} {unit}"
        return (f"{count / busy:.1f} {unit} a worker, {count / self.seconds:.1f} {unit} over "
                f"{self.workers} Ray worker{'s' * (self.workers != 1)}")


def _stats_delta(after: EngineStats, before: EngineStats) -> EngineStats:
    return EngineStats(**{f.name: getattr(after, f.name) - getattr(before, f.name)
                          for f in dataclasses.fields(EngineStats)})


def this_process() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


class Executor(abc.ABC):
    """Runs a stage's shards: every shard of every job goes through ``fn`` on its job's engine,
    and its rows become ``part-<index>`` of the writer's table. The stage keeps the rest (which
    shards are done, the manifest, the summary line), so a shard any executor wrote is a
    resume point for every other."""

    name: str

    def __init__(self, recipe: "Recipe", cache_dir: Path, log: Callable[[str], None] = print):
        self.recipe = recipe
        self.cache_dir = cache_dir
        self.log = log

    @abc.abstractmethod
    def run(self, fn: ShardFn, jobs: list[ShardJob], writer: "TableWriter", progress) -> ShardRun:
        """Run every shard of ``jobs``; ``progress`` (a tqdm bar) counts what ``fn`` reports."""


def run_one_shard(engine, fn: ShardFn, index: int, payload: Any, sink, progress=None) -> ShardResult:
    """Run one shard on an open engine and write its rows: the step both executors share."""
    t0 = time.perf_counter()
    before = dataclasses.replace(engine.stats)
    rows = fn(engine, payload, progress)
    n = sink.write_shard(index, rows)
    return ShardResult(index=index, rows=n, stats=_stats_delta(engine.stats, before),
                       seconds=time.perf_counter() - t0, worker=this_process())
