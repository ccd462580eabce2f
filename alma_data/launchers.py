"""How a training runs: in this process, or as ``accelerate launch`` of the same thin trainer.

- ``train.launcher=inprocess`` (the default): ``training.train_sft`` / ``train_dpo`` in this
  process, on one device.
- ``train.launcher=accelerate``: the same trainer in ``train.num_processes`` processes that
  ``accelerate launch`` starts (torchrun underneath: one process per GPU, or gloo on CPUs),
  with an optional ``train.accelerate_config`` file (multi-GPU, DeepSpeed, FSDP). This process
  writes the examples and the job to the staging folder, streams the processes' output,
  waits, and reads back their summary; the checkpoint is committed as for ``inprocess``.

The effective batch stays the recipe's: processes x per-device batch x accumulation =
``train.batch_size x train.gradient_accumulation`` (:func:`training.common.layout`), and
transformers averages the loss over the tokens of all processes, so a step computes the
same update as one process would, up to the order floats are added in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from alma_data.errors import AlmaError

LAUNCH_DIR = "_launch"


class LaunchError(AlmaError, RuntimeError):
    """A launched training failed or cannot start; the message says what to do."""


def train(job, model_path: str, dataset, out_dir: Path, spec, log: Callable[[str], None],
          quiet: bool = False) -> dict[str, Any]:
    """Train ``dataset`` into ``out_dir`` with the job's launcher; returns the training summary."""
    from training.common import LayoutError, layout

    try:
        per_device, _ = layout(spec)
    except LayoutError as exc:
        raise LaunchError(str(exc)) from None
    warn_uneven(job, len(dataset), per_device * spec.num_processes, log)
    if job.launcher == "inprocess":
        if spec.num_processes != 1:
            raise LaunchError(f"train.num_processes={spec.num_processes} needs train.launcher=accelerate "
                              "(the in-process trainer is one process)")
        return train_here(job.trainer, model_path, dataset, out_dir, spec, job.dpo_beta, log)
    return launch_accelerate(job, model_path, dataset, out_dir, spec, log, quiet)


def warn_uneven(job, examples: int, per_round: int, log: Callable[[str], None]) -> None:
    """Say so where data parallelism changes what the epoch's last step sees."""
    short = -examples % per_round
    if per_round > 1 and short and job.spec.get("num_processes", 1) > 1:
        log(f"  {job.name}: {examples} examples are not a multiple of {per_round} (processes x per-device batch): "
            f"the last step of each epoch repeats {short} examples from the epoch's start to fill every process's "
            "batch (accelerate's even batches), where one process takes a smaller last step")


def train_here(trainer: str, model_path: str, dataset, out_dir: Path, spec, beta: float,
               log: Callable[[str], None]) -> dict[str, Any]:
    from alma_data.prompting import render_chat
    from training import train_dpo, train_sft

    if trainer == "dpo":
        return train_dpo(model_path, dataset, out_dir, spec, beta=beta, log=log, render_prompt=render_chat)
    if trainer == "sft_soft":
        from training.distill import train_soft_sft

        return train_soft_sft(model_path, dataset, out_dir, spec, log=log, render_prompt=render_chat)
    return train_sft(model_path, dataset, out_dir, spec, log=log, render_prompt=render_chat)


def accelerate_command(num_processes: int, config_file: str, bf16: bool, job_file: Path,
                       machines: tuple[int, int, str, int] | None = None) -> list[str]:
    """``accelerate launch`` of this module's :func:`main` on ``job_file`` (on one of several
    ``machines``: their number, this one's rank, rank 0's address and port)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           # precision is the recipe's (train.bf16), whatever the file says
           "--mixed_precision", "bf16" if bf16 else "no", "--dynamo_backend", "no"]
    if config_file:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise LaunchError(f"train.accelerate_config={config_file}: no such file here ({Path.cwd()}); "
                              "write one with `accelerate config --config_file FILE` or give its absolute path")
        cmd += ["--config_file", str(path.resolve())]
    if machines:
        count, rank, address, port = machines
        cmd += ["--num_machines", str(count), "--machine_rank", str(rank), "--main_process_ip", address,
                "--main_process_port", str(port)]
    elif not config_file:
        cmd += ["--num_machines", "1", "--main_process_port", "0"]  # 0: a free port
    if not config_file and num_processes > 1:
        cmd.append("--multi_gpu")  # torchrun: one process per GPU, or gloo on CPUs
    return cmd + ["-m", "alma_data.launchers", str(job_file)]


def launch_env(num_processes: int) -> dict[str, str]:
    env = dict(os.environ)
    import torch

    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in env:
        # CPU processes share the cores (torchrun would give each one thread)
        env["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // num_processes))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    import alma_data

    root = str(Path(alma_data.__file__).resolve().parent.parent)  # a source checkout runs its own code
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def launch_accelerate(job, model_path: str, dataset, out_dir: Path, spec, log: Callable[[str], None],
                      quiet: bool = False) -> dict[str, Any]:
    job_file = prepare_launch(job, model_path, dataset, out_dir, spec)
    seconds = run_launch(job, spec, job_file, log, quiet)
    return finish_launch(out_dir, seconds)


def prepare_launch(job, model_path: str, dataset, out_dir: Path, spec) -> Path:
    """The examples and the job file the launched processes read, in the staging folder."""
    from training.common import last_complete_save

    work = out_dir / LAUNCH_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dataset.save_to_disk(str(work / "dataset"))
    job_file = work / "job.json"
    job_file.write_text(json.dumps({
        "trainer": job.trainer, "model_path": model_path, "dataset": str(work / "dataset"), "out_dir": str(out_dir),
        "spec": spec.__dict__, "beta": job.dpo_beta}))
    # Saves cut short by a kill go before the processes start, so that they all resume from one.
    last_complete_save(out_dir / "_trainer", spec.num_processes)
    (out_dir / "training_summary.json").unlink(missing_ok=True)
    return job_file


def run_launch(job, spec, job_file: Path, log: Callable[[str], None], quiet: bool = False,
               machines: tuple[int, int, str, int] | None = None) -> float:
    """``accelerate launch`` of the job on this machine (``machines``: how many, this one's rank,
    the address and port of rank 0's); its seconds, or LaunchError with the end of its output."""
    cmd = accelerate_command(spec.num_processes, job.accelerate_config, spec.bf16, job_file, machines)
    on = f" (machine {machines[1]} of {machines[0]})" if machines else ""
    log(f"  {job.name}: accelerate launch with {spec.num_processes} process{'es' * (spec.num_processes != 1)}{on}"
        + (f", config {job.accelerate_config}" if job.accelerate_config else ""))
    t0 = time.time()
    # its output goes where the libraries' does: a quiet build's log file, else the terminal
    from alma_data.console import libraries_quiet

    tail = stream(cmd, launch_env(spec.num_processes // (machines[0] if machines else 1)),
                  echo=not quiet or libraries_quiet())
    if tail is not None:
        raise LaunchError(
            f"training {job.describe()} with accelerate launch ({spec.num_processes} processes{on}) failed:\n"
            f"{tail}\nThe saves of train.save_steps in {job_file.parent.parent / '_trainer'} are kept: fix the cause "
            "and rerun the build to resume from the last one")
    return time.time() - t0


def finish_launch(out_dir: Path, seconds: float) -> dict[str, Any]:
    """Rank 0's training summary, with what the launch added to it."""
    work = out_dir / LAUNCH_DIR
    summary_file = out_dir / "training_summary.json"
    if not summary_file.is_file():
        raise LaunchError(f"accelerate launch ended without writing {summary_file}; see its output above")
    summary = json.loads(summary_file.read_text())
    summary["launch_seconds"] = round(seconds, 2)
    summary["launch_overhead_seconds"] = round(seconds - summary["seconds"], 2)
    started = work / "started.json"
    if started.is_file():  # rank 0: from its start to its imports done and examples loaded
        summary.update(json.loads(started.read_text()))
    summary_file.write_text(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return summary


def stream(cmd: list[str], env: dict[str, str], echo: bool = True) -> str | None:
    """Run ``cmd``, passing its output (progress bars included) to this process's stderr as it
    comes; None when it succeeds, else the end of its output."""
    tail: deque[bytes] = deque(maxlen=64)
    out = getattr(sys.stderr, "buffer", None)  # a notebook's stderr takes text only
    # its own process group, so that a stopped build stops every training process with it; and
    # a build (or Ray worker) killed outright takes the launcher along, which ends its processes
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=_end_with_parent if sys.platform.startswith("linux") else None)
    try:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):
            tail.append(chunk)
            if echo and out is not None:
                out.write(chunk)
                out.flush()
            elif echo:
                sys.stderr.write(chunk.decode(errors="replace"))
        proc.wait()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    if proc.returncode == 0:
        return None
    text = b"".join(tail).decode(errors="replace")
    return f"(exit status {proc.returncode}) ...\n" + "\n".join(text.splitlines()[-30:])


def _end_with_parent() -> None:
    """In the launcher's process before it starts: SIGTERM it when its parent dies (Linux)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    """One process of a launched training (``accelerate launch -m alma_data.launchers JOB``)."""
    import datasets

    from training import TrainSpec

    from alma_data.console import libraries_quiet, quiet_libraries

    if libraries_quiet():  # the build that launched it is not --verbose
        quiet_libraries()
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    dataset = datasets.load_from_disk(job["dataset"])
    if int(os.environ.get("RANK", "0")) == 0:
        import psutil

        imported = time.time() - psutil.Process().create_time()
        (Path(argv[0]).parent / "started.json").write_text(json.dumps({"process_start_seconds": round(imported, 2)}))
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    train_here(job["trainer"], job["model_path"], dataset, Path(job["out_dir"]), TrainSpec(**job["spec"]),
               job["beta"], log)


if __name__ == "__main__":
    main()
