"""``executor=ray`` for training: a checkpoint's training as one Ray task on a node with the
resources the recipe asks for (``ray.train_gpus``, ``ray.train_cpus``).

The task gets the job as JSON (runs folder, splits, base, knobs), reads the splits from the
store, trains there (in its process, or ``accelerate launch`` over the node's GPUs with
``train.launcher=accelerate``) and commits the checkpoint to the store; the build only waits
for it, holding no model, so a head node without GPUs can drive a whole build. The runs
folder must be one every node reaches: a shared mount at the same path, or an object store.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from alma_data.config import Recipe
from alma_data.errors import AlmaError, remote_cause
from alma_data.train_job import TrainJob, job_json, load_job, run_job_on_worker


class RayTrainingError(AlmaError, RuntimeError):
    """The training task could not be placed or failed on its node."""


def train_on_ray(recipe: Recipe, job: TrainJob, log: Callable[[str], None]) -> dict[str, Any]:
    from alma_data.executors import connect, import_ray, worker_env

    ray = import_ray()
    cfg = recipe.ray
    connect(ray, cfg, log)
    if cfg.train_cpus <= 0 and cfg.train_gpus <= 0:
        raise RayTrainingError("ray.train_cpus and ray.train_gpus are both 0: give the training task a CPU or GPU")
    n = job.spec["num_processes"]
    per_node = n // max(1, cfg.train_nodes)
    if cfg.train_gpus >= 1 and per_node > cfg.train_gpus:
        raise RayTrainingError(f"train.num_processes={n} over ray.train_nodes={cfg.train_nodes} is {per_node} a node, but a "
                               f"node's task has ray.train_gpus={cfg.train_gpus:g}: one process a GPU; raise "
                               "ray.train_gpus or lower train.num_processes")
    res = ray.cluster_resources()
    local = not (cfg.address or os.environ.get("RAY_ADDRESS"))
    nodes = max(1, cfg.train_nodes)
    if local and (res.get("CPU", 0) < cfg.train_cpus * nodes or res.get("GPU", 0) < cfg.train_gpus * nodes):
        raise RayTrainingError(
            f"the training asks for {nodes} task(s) of {cfg.train_cpus:g} CPUs and {cfg.train_gpus:g} GPUs "
            f"(ray.train_nodes, ray.train_cpus, ray.train_gpus); this machine's Ray has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs: "
            "lower them, or join a cluster with ray.address")
    if cfg.train_nodes > 1:
        return _train_on_nodes(ray, recipe, job, log)
    task = ray.remote(run_job_on_worker).options(
        num_cpus=cfg.train_cpus, num_gpus=cfg.train_gpus, max_retries=0,
        runtime_env={"env_vars": worker_env(cfg.train_cpus)})
    log(f"ray: training {job.describe()} as a Ray task with {cfg.train_gpus:g} GPUs and {cfg.train_cpus:g} CPUs"
        + (f" ({n} processes, accelerate)" if job.launcher == "accelerate" else ""))
    ref = task.remote(job_json(job))
    try:
        return ray.get(ref)
    except KeyboardInterrupt:
        ray.cancel(ref, force=True)
        raise
    except Exception as exc:
        raise RayTrainingError(
            f"training {job.describe()} failed on its Ray node: {remote_cause(exc)}\n"
            "Its train.save_steps saves stay in the checkpoint's staging folder on that node: rerun the build to "
            "resume (with executor=ray or executor=local)") from exc


def _train_on_nodes(ray, recipe: Recipe, job: TrainJob, log: Callable[[str], None]) -> dict[str, Any]:
    """One training over ``ray.train_nodes`` tasks placed apart (a placement group spread over
    the nodes): the first makes the staging folder and the examples in the shared runs folder
    and names rank 0's address; then each runs ``accelerate launch`` as one machine of N, and
    machine 0 commits the checkpoint."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from alma_data.executors import worker_env

    cfg, nodes, n = recipe.ray, recipe.ray.train_nodes, job.spec["num_processes"]
    if job.launcher != "accelerate":
        raise RayTrainingError(f"ray.train_nodes={nodes} needs train.launcher=accelerate")
    if n % nodes:
        raise RayTrainingError(f"train.num_processes={n} cannot be spread evenly over ray.train_nodes={nodes}")
    if "://" in job.runs_dir:
        raise RayTrainingError(f"ray.train_nodes={nodes} needs runs_dir on a filesystem every node mounts at the same "
                               f"path (the processes of one training share its staging folder), not {job.runs_dir}")
    bundle = {"CPU": cfg.train_cpus, **({"GPU": cfg.train_gpus} if cfg.train_gpus else {})}
    pg = placement_group([bundle] * nodes, strategy="SPREAD")
    log(f"ray: training {job.describe()} over {nodes} nodes, {n // nodes} processes each "
        f"({cfg.train_gpus:g} GPUs and {cfg.train_cpus:g} CPUs a node)")
    refs: list = []
    try:
        ray.get(pg.ready())

        def on(i):
            return dict(num_cpus=cfg.train_cpus, num_gpus=cfg.train_gpus, max_retries=0,
                        runtime_env={"env_vars": worker_env(cfg.train_cpus)},
                        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg,
                                                                             placement_group_bundle_index=i))
        text = job_json(job)
        prepared = _get(ray, [ray.remote(prepare_nodes).options(**on(0)).remote(text)], job)[0]
        refs = [ray.remote(launch_node).options(**on(i)).remote(text, prepared, i, nodes) for i in range(nodes)]
        summary = _get(ray, refs, job)[0]
        refs = []
        return summary
    finally:
        for ref in refs:  # after a failure: the other machines cannot finish alone
            ray.cancel(ref, force=True)
        remove_placement_group(pg)


def _get(ray, refs: list, job: TrainJob) -> list:
    """The tasks' results in order; the first failure ends the wait (and, by the caller, the rest)."""
    pending, done = list(refs), {}
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            done[ready[0]] = ray.get(ready[0])
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            raise RayTrainingError(
                f"training {job.describe()} failed on a Ray node: "
                f"{f'{type(cause).__name__}: {cause}' if cause is not None else exc}\n"
                "Its train.save_steps saves stay in the checkpoint's staging folder: rerun the build to resume") from exc
    return [done[r] for r in refs]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_nodes(text: str) -> dict[str, Any]:
    """Machine 0's first task: staging folder, examples and job file, and where to meet."""
    from dataclasses import asdict

    import ray

    from alma_data.launchers import LaunchError, prepare_launch, warn_uneven
    from alma_data.store import local_model_path
    from alma_data.train_job import stage_job
    from training.common import LayoutError, layout

    job = load_job(text)
    staged = stage_job(job, _log)
    try:
        per_device, _ = layout(staged.spec)
    except LayoutError as exc:
        raise LaunchError(str(exc)) from None
    warn_uneven(job, len(staged.dataset), per_device * staged.spec.num_processes, _log)
    job_file = prepare_launch(job, local_model_path(job.base), staged.dataset, staged.tmp, staged.spec)
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return {"address": ray.util.get_node_ip_address(), "port": port, "job_file": str(job_file),
            "precision": staged.precision, "spec": asdict(staged.spec)}


def launch_node(text: str, prepared: dict[str, Any], rank: int, nodes: int) -> dict[str, Any] | None:
    """Machine ``rank`` of ``nodes``: its share of the processes; machine 0 commits the checkpoint."""
    from alma_data.executors import this_process
    from alma_data.launchers import finish_launch, run_launch
    from alma_data.store import Store
    from alma_data.train_job import Staged, commit_job
    from training import TrainSpec

    job = load_job(text)
    spec = TrainSpec(**prepared["spec"])
    job_file = Path(prepared["job_file"])
    seconds = run_launch(job, spec, job_file, _log, machines=(nodes, rank, prepared["address"], prepared["port"]))
    if rank != 0:
        return None
    store = Store(job.runs_dir, job.run)
    tmp = job_file.parent.parent
    job.run_by = {"executor": "ray", "process": this_process(), "nodes": nodes}
    return commit_job(job, Staged(store, tmp, spec, None, prepared["precision"]), finish_launch(tmp, seconds))
