"""``executor=local``: every shard in this process, one engine at a time (the default)."""

from __future__ import annotations

import time

from alma_data.engines import open_engine
from alma_data.executors.base import Executor, ShardFn, ShardJob, ShardRun, run_one_shard


class LocalExecutor(Executor):
    """Runs every shard in this process, one engine at a time (the default)."""

    name = "local"

    def run(self, fn: ShardFn, jobs: list[ShardJob], writer, progress) -> ShardRun:
        t0 = time.perf_counter()
        run = ShardRun(executor=self.name, workers=1)
        for job in jobs:
            if not job.shards:
                continue
            spec = job.engine
            t1 = time.perf_counter()
            engine = open_engine(self.recipe, spec.model_path, name=spec.name, round=spec.round, role=spec.role,
                                 cache_dir=self.cache_dir)
            opened = time.perf_counter() - t1
            try:
                for index, payload in job.shards:
                    run.results.append(run_one_shard(engine, fn, index, payload, writer, progress))
                    run.results[-1].engine_seconds, opened = opened, 0.0
            finally:
                engine.close()
        run.seconds = time.perf_counter() - t0
        return run
