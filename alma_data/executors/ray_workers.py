"""``executor=ray``: shards on Ray actors, each holding one engine, writing into the runs folder.

An actor whose checkpoint has no shards left is ended, and one for a checkpoint with shards
left takes its place where that pays (:class:`WorkerPlan`), so every engine lives in a
process of its own and frees its memory with it.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from alma_data.engines import open_engine
from alma_data.errors import remote_cause
from alma_data.executors.base import (EngineSpec, Executor, ExecutorError, ShardFn, ShardJob, ShardResult, ShardRun,
                                      run_one_shard, this_process)

if TYPE_CHECKING:
    from alma_data.config import Recipe
    from alma_data.store import ShardSink


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError("executor=ray needs Ray: pip install 'alma-data[ray]' (or pip install 'ray[default]'); "
                          "or build with executor=local") from exc
    return ray


def worker_env(num_cpus: float) -> dict[str, str]:
    """Environment of an engine worker: passive OpenMP waiting (workers share cores with
    each other and the driver) and as many torch threads as the worker has CPUs."""
    threads = str(max(1, int(num_cpus)))
    env = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false", "ALMA_DATA_TORCH_THREADS": threads}
    # Workers on this machine (or on a shared filesystem) run the driver's copy of the code,
    # also when it is a source checkout rather than the installed package.
    import alma_data

    root = Path(alma_data.__file__).resolve().parent.parent
    if root.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


class EngineWorker:
    """A Ray actor holding one engine for one checkpoint; it runs shards and writes them."""

    def __init__(self, recipe: "Recipe", spec: EngineSpec, cache_dir: str):
        threads = int(os.environ.get("ALMA_DATA_TORCH_THREADS", "0"))
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.recipe, self.spec, self.cache_dir = recipe, spec, cache_dir
        self.engine = None
        self.where = this_process()

    def run(self, fn: ShardFn, index: int, payload: Any, sink: "ShardSink") -> ShardResult:
        opened = 0.0
        if self.engine is None:
            t0 = time.perf_counter()
            spec = self.spec
            if os.path.isabs(spec.model_path) and not os.path.exists(spec.model_path):
                raise FileNotFoundError(
                    f"{spec.model_path} does not exist on {self.where}: the checkpoints live in the runs folder, so "
                    "runs_dir must be a folder every Ray node mounts at the same path (e.g. NFS) or an object store URI "
                    "(e.g. s3://bucket/runs)")
            self.engine = open_engine(self.recipe, spec.model_path, name=spec.name, round=spec.round,
                                      role=spec.role, cache_dir=self.cache_dir)
            opened = time.perf_counter() - t0
        result = run_one_shard(self.engine, fn, index, payload, sink)
        result.engine_seconds = opened
        return result

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class RayExecutor(Executor):
    """Runs shards on Ray actors, one engine each; joins ``ray.address`` or starts a local Ray."""

    name = "ray"

    def __init__(self, recipe: "Recipe", cache_dir: Path, log: Callable[[str], None] = print):
        super().__init__(recipe, str(Path(cache_dir).resolve()), log)
        self.ray = import_ray()
        self.cfg = recipe.ray
        if self.cfg.num_cpus_per_worker <= 0 and self.cfg.num_gpus_per_worker <= 0:
            raise ExecutorError("ray.num_cpus_per_worker and ray.num_gpus_per_worker are both 0: "
                                "give each worker at least one CPU or GPU")
        connect(self.ray, self.cfg, log)
        # a Ray instance of this machine alone, which no autoscaler grows
        self.local = not (self.cfg.address or os.environ.get("RAY_ADDRESS"))
        self.actor_class = self.ray.remote(EngineWorker)

    def workers_for(self, shards: int) -> int:
        cfg = self.cfg
        if cfg.num_workers > 0:
            n = cfg.num_workers
        else:
            res = self.ray.cluster_resources()
            if cfg.num_gpus_per_worker > 0:
                n = int(res.get("GPU", 0) // cfg.num_gpus_per_worker)
                if n == 0:
                    raise ExecutorError(f"ray.num_gpus_per_worker={cfg.num_gpus_per_worker:g} but the Ray cluster has "
                                        f"no GPUs ({res.get('CPU', 0):g} CPUs): start the GPU nodes with "
                                        "`ray start --address=HEAD:6379`, or set ray.num_gpus_per_worker=0")
            else:
                n = int(res.get("CPU", 0) // cfg.num_cpus_per_worker)
        n = max(1, min(n, shards))
        res = self.ray.cluster_resources()
        fit = min(res.get("CPU", 0) // cfg.num_cpus_per_worker if cfg.num_cpus_per_worker else n,
                  res.get("GPU", 0) // cfg.num_gpus_per_worker if cfg.num_gpus_per_worker else n)
        if fit < 1 and self.local:
            raise ExecutorError(f"a worker needs {cfg.num_cpus_per_worker:g} CPUs and {cfg.num_gpus_per_worker:g} GPUs; "
                                f"this machine's Ray has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs: "
                                "lower ray.num_cpus_per_worker / ray.num_gpus_per_worker, or join a cluster with ray.address")
        if fit < n:
            self.log(f"ray: {n} workers of {cfg.num_cpus_per_worker:g} CPUs and {cfg.num_gpus_per_worker:g} GPUs each "
                     f"do not fit the cluster now ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs): "
                     f"{int(fit)} run at once and the others wait (or an autoscaler adds nodes)")
        return n

    def _start(self, spec: EngineSpec):
        cfg = self.cfg
        return self.actor_class.options(
            num_cpus=cfg.num_cpus_per_worker, num_gpus=cfg.num_gpus_per_worker,
            runtime_env={"env_vars": worker_env(cfg.num_cpus_per_worker)},
        ).remote(self.recipe, spec, self.cache_dir)

    def _end(self, actor, polite: bool = True) -> None:
        if polite:  # let the engine free its memory the way it knows, then end the process
            try:
                self.ray.get(actor.close.remote(), timeout=60)
            except Exception:  # a dead or stuck actor is killed below all the same
                pass
        self.ray.kill(actor)

    def run(self, fn: ShardFn, jobs: list[ShardJob], writer, progress) -> ShardRun:
        ray = self.ray
        t0 = time.perf_counter()
        sink = writer.sink()
        plan = WorkerPlan(jobs)
        n_workers = self.workers_for(plan.pending()) if plan.pending() else 0
        run = ShardRun(executor=self.name, workers=n_workers)
        slots: list[list] = [[None, None] for _ in range(n_workers)]   # [actor, spec]
        asked: dict[int, float] = {}                                     # slot -> when its worker was asked for
        in_flight: dict[Any, tuple[int, EngineSpec, int]] = {}          # ref -> (slot, spec, shard)

        def feed(slot: int) -> None:
            actor, spec = slots[slot]
            want = plan.next_engine(spec)
            if want != spec:
                if actor is not None:
                    self._end(actor)
                    plan.holders[spec] -= 1
                slots[slot] = [None, None]
                if want is None:
                    return
                actor, spec = self._start(want), want
                slots[slot] = [actor, spec]
                asked[slot] = time.perf_counter()
                plan.holders[spec] += 1
            index, payload = plan.queues[spec].popleft()
            in_flight[actor.run.remote(fn, index, payload, sink)] = (slot, spec, index)

        if n_workers:
            self.log(f"ray: {plan.pending()} shards of {writer.table} on {n_workers} worker{'s' * (n_workers != 1)} "
                     f"({', '.join(f'{s.label()}: {len(q)}' for s, q in plan.queues.items())})")
        finished = False
        try:
            for slot in range(n_workers):
                feed(slot)
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                slot, spec, index = in_flight.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except Exception as exc:
                    raise ExecutorError(
                        f"{writer.dir}: shard {index} (engine {spec.label()}) failed on a Ray worker: "
                        f"{remote_cause(exc)}\n"
                        "The shards written so far are kept: fix the cause and rerun the build to resume "
                        "(with executor=ray or executor=local)") from exc
                run.results.append(result)
                startup = None
                if slot in asked:
                    startup = time.perf_counter() - asked.pop(slot) - result.seconds
                    run.worker_start_seconds += max(0.0, startup - result.engine_seconds)
                plan.record(spec, result.seconds, startup)
                if progress is not None:
                    progress.update(result.rows)
                feed(slot)
            finished = True
        finally:
            for actor, _ in slots:
                if actor is not None:
                    self._end(actor, polite=finished)
        run.seconds = time.perf_counter() - t0
        return run


class WorkerPlan:
    """Which engine a free Ray worker should hold next.

    A worker keeps its engine while that engine has shards waiting. Once it has none, the
    worker is ended, and a worker for another engine starts in its place only where that
    pays: when that engine has no worker, or when its waiting shards would keep its
    workers busy for longer than starting a worker takes (both measured in this stage).
    """

    def __init__(self, jobs: list[ShardJob]):
        self.queues = {job.engine: deque(job.shards) for job in jobs if job.shards}
        self.holders = {spec: 0 for spec in self.queues}
        self.shard_seconds: dict[EngineSpec, list[float]] = {spec: [] for spec in self.queues}
        self.startups: list[float] = []

    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def record(self, spec: EngineSpec, shard_seconds: float, startup: float | None) -> None:
        self.shard_seconds[spec].append(shard_seconds)
        if startup is not None:
            self.startups.append(startup)

    def worth_starting(self, spec: EngineSpec) -> bool:
        if self.holders[spec] == 0 or not self.startups:  # nobody holds it, or the stage is starting
            return True
        times = self.shard_seconds[spec] or [t for ts in self.shard_seconds.values() for t in ts]
        waiting = len(self.queues[spec]) * sum(times) / len(times) / self.holders[spec]
        return waiting > sum(self.startups) / len(self.startups)

    def next_engine(self, current: EngineSpec | None) -> EngineSpec | None:
        if current is not None and self.queues[current]:
            return current
        waiting = [s for s, q in self.queues.items() if q and self.worth_starting(s)]
        # an engine nobody holds first, then the one whose waiting shards have the fewest workers to share them
        return max(waiting, key=lambda s: (self.holders[s] == 0, len(self.queues[s]) / (1 + self.holders[s])),
                   default=None)


def connect(ray, cfg, log: Callable[[str], None]) -> None:
    """Join the cluster at ``ray.address``, or start a local instance sized by the recipe."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning", "log_to_driver": True}
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")  # Ray's own variable, as `ray job submit` sets it
    if address:
        ray.init(address=address, **kwargs)
        where = f"joined the Ray cluster at {address}"
    else:
        cpus = (cfg.num_workers * cfg.num_cpus_per_worker if cfg.num_workers and cfg.num_cpus_per_worker
                else os.cpu_count() or 1)
        ray.init(num_cpus=max(1, int(round(cpus))), **kwargs)
        where = "started a local Ray instance"
    res = ray.cluster_resources()
    log(f"ray: {where}: {len(ray.nodes())} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")
