"""One training of a checkpoint, as data: what a build hands to whoever trains it.

A :class:`TrainJob` names the run, the store splits to train on, the model to start from
and the trainer's knobs; :func:`run_job` does the rest wherever it runs (the build's own
process, or a Ray task on a GPU node): it reads the splits from the store, trains with
the recipe's launcher (:mod:`alma_data.launchers`), resumes from the staging folder's last
save, and commits the checkpoint with its manifest. So the build process needs no model
and no GPU when training runs elsewhere; the store is what both sides share.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

Data = Literal["policy", "judge", "pairs"]


@dataclass
class TrainJob:
    runs_dir: str
    """The runs folder (an absolute path, or an object store URI) and the run in it."""
    run: str
    round: int
    name: str
    trainer: Literal["sft", "sft_soft", "dpo"]
    """``sft_soft``: SFT with the teacher's distribution as target where a row has one
    (judge.distill_target=soft, training/distill.py)."""
    data: Data
    """How store rows become examples: ``policy`` (prompt -> response), ``judge`` (judge
    question -> ``Rating: [[s]]``, held-out rows left out), ``pairs`` (prompt, chosen, rejected)."""
    tables: list[tuple[int, str]]
    base: str
    """What training starts from: a model path or Hub id, or a checkpoint location."""
    base_model: str
    """The recipe's base model M0 (for the manifest)."""
    spec: dict[str, Any]
    """:class:`training.TrainSpec` fields."""
    config_hash: str
    inputs: dict[str, str]
    bf16_setting: Any = False
    """``train.bf16`` as the recipe says it (``auto``/true/false), for the manifest."""
    judge_scale: int = 10
    dpo_beta: float = 0.1
    launcher: Literal["inprocess", "accelerate"] = "inprocess"
    accelerate_config: str = ""
    run_by: dict[str, Any] = field(default_factory=dict)
    """Filled by whoever runs the job: where it ran (executor, process)."""

    def describe(self) -> str:
        return f"round={self.round}/{self.name}"


def make_dataset(job: TrainJob, store):
    """The job's training examples, read from the store's shards on this machine."""
    import datasets

    from alma_data.prompting import judge_question, judge_target
    from training import parquet_dataset

    if job.data == "policy":
        files = [f for rnd, table in job.tables for f in store.download(rnd, table)]
        return parquet_dataset(files, ["prompt", "response"],
                               lambda r: {"prompt": r["prompt"], "completion": r["response"]})
    if job.data == "pairs":
        files = [f for rnd, table in job.tables for f in store.download(rnd, table)]
        return parquet_dataset(files, ["prompt", "chosen", "rejected"])
    scale = job.judge_scale
    if job.trainer == "sft_soft":
        from training.distill import soft_judge_dataset

        return soft_judge_dataset([(store.download(rnd, table), "heldout" in store.manifest(rnd, table)["columns"],
                                    "probs" in store.manifest(rnd, table)["columns"]) for rnd, table in job.tables], scale)
    parts = []
    for rnd, table in job.tables:
        files = store.download(rnd, table)
        has_heldout = "heldout" in store.manifest(rnd, table)["columns"]
        ds = parquet_dataset(files, ["prompt", "response", "score"] + (["heldout"] if has_heldout else []))
        if has_heldout:
            ds = ds.filter(lambda r: not r["heldout"]).remove_columns("heldout")
        # the judge's own real-valued scores are rounded to the answer format's integers
        parts.append(ds.map(lambda r: {"prompt": judge_question(r["prompt"], r["response"], scale),
                                       "completion": judge_target(int(math.floor(r["score"] + 0.5)))},
                            remove_columns=ds.column_names))
    return datasets.concatenate_datasets(parts)


def precision_record(setting, bf16: bool) -> dict:
    """What the checkpoint's manifest says about the precision it was trained in, and why
    (described on the machine that trains)."""
    from alma_data.precision import describe

    info = describe()
    dtype = "bfloat16" if bf16 else "float32"
    if setting == "auto":
        # The device's full name is in the record (``device_name``); the line a build prints stays short.
        why = ("train.bf16=auto: native on this CPU/GPU" if info["bf16_native"] else
               "train.bf16=auto: this CPU/GPU has no native bf16, where it is emulated and slow")
    else:
        why = f"train.bf16={str(setting).lower()}"
    return {"dtype": dtype, "setting": setting, "why": why, **info}


@dataclass
class Staged:
    """A job ready to train: its staging folder, trainer knobs, examples and precision."""
    store: Any
    tmp: Path
    spec: Any
    dataset: Any
    precision: dict


def stage_job(job: TrainJob, log: Callable[[str], None]) -> Staged:
    """Make the staging folder ready (kept where it holds saves of this very training, to resume
    from), and read the job's examples from the store."""
    from alma_data.precision import resolve_bf16
    from alma_data.store import Store
    from training import TrainSpec

    store = Store(job.runs_dir, job.run)
    # train.bf16=auto means what this machine computes natively, not the build's machine
    spec = TrainSpec(**{**job.spec, "bf16": resolve_bf16(job.bf16_setting)})
    tmp = store.checkpoint_staging(job.round, job.name)
    # A training stopped with the same inputs and configuration resumes from its last saved
    # state (train.save_steps); anything else in the staging folder is stale.
    marker = {"config_hash": job.config_hash, "inputs": job.inputs, "base": job.base}
    resumable = tmp / "_resume.json"
    if not (resumable.is_file() and json.loads(resumable.read_text()) == marker):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        resumable.write_text(json.dumps(marker))
    dataset = make_dataset(job, store)
    precision = precision_record(job.bf16_setting, spec.bf16)
    where = f" with {spec.num_processes} processes ({job.launcher})" if job.launcher != "inprocess" else ""
    base = Path(str(job.base)).name if Path(str(job.base)).is_dir() else job.base  # not the model cache's path
    log(f"  training {job.name} from {base} on {len(dataset)} examples in {precision['dtype']} "
        f"({precision['why']}){where}")
    return Staged(store, tmp, spec, dataset, precision)


def commit_job(job: TrainJob, staged: Staged, summary: dict[str, Any]) -> dict[str, Any]:
    summary.update(launcher=job.launcher, run_by=job.run_by)
    (staged.tmp / "_resume.json").unlink()
    staged.store.commit_checkpoint(staged.tmp, job.round, job.name, {
        "config_hash": job.config_hash, "inputs": job.inputs, "base_model": job.base_model,
        "started_from": job.base, "training": summary, "precision": staged.precision,
    })
    return summary


def run_job(job: TrainJob, log: Callable[[str], None], quiet: bool = False) -> dict[str, Any]:
    """Train the job's checkpoint here and commit it to the store; returns the training summary."""
    from alma_data.launchers import train
    from alma_data.store import local_model_path

    staged = stage_job(job, log)
    summary = train(job, local_model_path(job.base), staged.dataset, staged.tmp, staged.spec, log, quiet)
    return commit_job(job, staged, summary)


def run_job_on_worker(job_json: str) -> dict[str, Any]:
    """The Ray task: a job (as JSON, so the worker needs nothing of the driver's objects) run
    on whichever node Ray placed it; log lines go to the driver through Ray's log forwarding."""
    import sys

    from alma_data.executors import this_process

    threads = int(os.environ.get("ALMA_DATA_TORCH_THREADS", "0"))
    if threads:
        import torch

        torch.set_num_threads(threads)
    job = load_job(job_json)
    job.run_by = {"executor": "ray", "process": this_process(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    return run_job(job, lambda m: print(m, file=sys.stderr, flush=True))


def job_json(job: TrainJob) -> str:
    return json.dumps(asdict(job))


def load_job(text: str) -> TrainJob:
    job = TrainJob(**json.loads(text))
    job.tables = [tuple(t) for t in job.tables]
    return job


def absolute_runs_dir(runs_dir) -> str:
    """What a process elsewhere (another working directory, another node) opens the run by."""
    text = str(runs_dir)
    return text if "://" in text else str(Path(text).resolve())
