"""Training past one process: ``train.launcher=accelerate`` with two CPU processes (gloo), and
``executor=ray`` training a checkpoint on a Ray worker.

Two processes compute each step's update from the same examples as one process (the same
shuffled order, the effective batch split 4 + 4, the loss averaged over the tokens of both),
but not bit for bit: each process sums its half's gradients, gloo adds the two halves, and
each half is padded to its own longest row, so the float sums run in another order. The
weights agree to float32 rounding (measured: see the assertions); the same process count
again, killed and resumed or not, gives the same bits.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from alma_data.store import Store

# m1a of the tiny recipe, 5 steps of 8 examples: 40 of its 44 SFT rows, so that no step is an
# epoch's short last one (two processes fill that one up with examples from the epoch's start)
STEPS = ["train.max_steps=5", "train.bf16=false"]
TWO = ["train.launcher=accelerate", "train.num_processes=2"]
ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_WAIT_POLICY": "PASSIVE"}

# Round 1's seed tables and m1a only (a whole round 1 trains the judge and m1b too).
TRAIN_M1A = """
import sys
from alma_data.config import load_recipe
from alma_data.plan import stages_of
from alma_data.round import check_run
from alma_data.runner import run_stages
from alma_data.stage import Context
from alma_data.store import Store

runs, run, *keys = sys.argv[1:]
recipe = load_recipe("tiny", dict(k.split("=", 1) for k in keys))
store = Store(runs, run)
check_run(store, recipe)
ctx = Context(store, recipe)
run_stages(ctx, stages_of(recipe, 1, "prompts", "sft", "judge_seed", "m1a"))
"""


def test_layout_keeps_the_recipes_effective_batch():
    from training.common import LayoutError, TrainSpec, layout

    def per_device(batch, accumulation, processes):
        return layout(TrainSpec(batch_size=batch, gradient_accumulation=accumulation, num_processes=processes))

    assert per_device(8, 1, 1) == (8, 1) and per_device(8, 1, 2) == (4, 1)
    assert per_device(8, 4, 8) == (4, 1)   # the paper recipe's 32 on 8 GPUs
    assert per_device(8, 4, 2) == (8, 2)   # at most the recipe's batch a device, then accumulation
    assert per_device(8, 4, 16) == (2, 1) and per_device(1, 8, 2) == (1, 4)
    with pytest.raises(LayoutError, match="cannot be split over train.num_processes=3"):
        per_device(8, 1, 3)


def test_accelerate_command_takes_the_recipes_processes_and_precision(tmp_path):
    from alma_data.launchers import LaunchError, accelerate_command

    cmd = accelerate_command(2, "", False, tmp_path / "job.json")
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--mixed_precision") + 1] == "no"
    assert "--multi_gpu" in cmd and cmd[-3:] == ["-m", "alma_data.launchers", str(tmp_path / "job.json")]
    (tmp_path / "zero3.yaml").write_text("distributed_type: DEEPSPEED\n")
    cmd = accelerate_command(8, str(tmp_path / "zero3.yaml"), True, tmp_path / "job.json", machines=(2, 1, "10.0.0.1", 29501))
    assert cmd[cmd.index("--config_file") + 1] == str(tmp_path / "zero3.yaml") and "--multi_gpu" not in cmd
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16" and cmd[cmd.index("--machine_rank") + 1] == "1"
    with pytest.raises(LaunchError, match="no such file"):
        accelerate_command(2, str(tmp_path / "missing.yaml"), False, tmp_path / "job.json")


def train_m1a(runs, run, *keys, check=True):
    proc = subprocess.run([sys.executable, "-c", TRAIN_M1A, str(runs), run, *keys], capture_output=True, text=True,
                          env=ENV, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"training m1a with {keys} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def weights(runs, run, round=1, name="m1a"):
    return load_file(Store(runs, run).checkpoint_dir(round, name) / "model.safetensors")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """m1a trained in-process and with two processes, with their wall times."""
    runs = tmp_path_factory.mktemp("launch_runs")
    seconds = {}
    for run, keys in (("inprocess", STEPS), ("one", STEPS + ["train.launcher=accelerate"]), ("two", STEPS + TWO)):
        t0 = time.time()
        train_m1a(runs, run, *keys)
        seconds[run] = time.time() - t0
    (runs / "seconds.json").write_text(json.dumps(seconds))
    return runs


def test_two_cpu_processes_train_m1a_as_one_does(trained):
    runs = trained
    one, two = Store(runs, "inprocess").checkpoint_manifest(1, "m1a"), Store(runs, "two").checkpoint_manifest(1, "m1a")
    t1, t2 = one["training"], two["training"]
    assert (t1["world_size"], t1["per_device_batch_size"], t1["effective_batch_size"], t1["launcher"]) == \
        (1, 8, 8, "inprocess")
    # the recipe's effective batch of 8: 2 processes x 4 a device x 1 accumulation step, over gloo
    assert (t2["world_size"], t2["per_device_batch_size"], t2["gradient_accumulation_steps"],
            t2["effective_batch_size"], t2["backend"], t2["launcher"]) == (2, 4, 1, 8, "gloo", "accelerate")
    assert t1["steps"] == t2["steps"] == 5 and t1["examples_seen"] == t2["examples_seen"] == 40
    assert t2["launch_seconds"] >= t2["seconds"]
    assert t2["run_by"]["executor"] == "local" and t2["process_start_seconds"] > 0
    assert abs(t1["train_loss"] - t2["train_loss"]) < 1e-5, (t1["train_loss"], t2["train_loss"])

    a, b = weights(runs, "inprocess"), weights(runs, "two")
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    scale = max(a[k].float().abs().max().item() for k in a)
    base = base_weights()
    moved = max((a[k].float() - base[k].float()).abs().max().item() for k in a if k in base)
    print(f"\nmax |w_1proc - w_2proc| = {diff:.3g} (largest weight {scale:.3g}, largest change in training {moved:.3g})")
    # not bit-identical (float sums in another order), but as close as float32 rounding over 5 Adam steps leaves
    assert diff < 1e-4 * max(1.0, scale), diff
    assert diff < 1e-2 * moved


def base_weights():
    from alma_data.models import resolve

    return load_file(os.path.join(resolve("tiny-random"), "model.safetensors"))


def test_one_launched_process_trains_as_in_process(trained):
    """What makes train.launcher an execution key: with one process, the same bits."""
    m = Store(trained, "one").checkpoint_manifest(1, "m1a")
    assert m["training"]["launcher"] == "accelerate" and m["training"]["world_size"] == 1
    a, b = weights(trained, "one"), weights(trained, "inprocess")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert m["hash"] == Store(trained, "inprocess").checkpoint_manifest(1, "m1a")["hash"]


def test_launcher_and_process_count_in_the_recipe(trained):
    fp = lambda run: json.loads((trained / run / "run.json").read_text())["fingerprint"]  # noqa: E731
    from alma_data.config import load_recipe

    # the launcher is how a build runs (no recipe change); the process count changes the weights' last bits
    assert load_recipe("tiny", {"train.launcher": "accelerate"}).fingerprint() == load_recipe("tiny").fingerprint()
    assert fp("two") != fp("inprocess")


def _training_processes(root_pid):
    procs = []
    for p in psutil.Process(root_pid).children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "alma_data.launchers" in cmd and "accelerate.commands.launch" not in " ".join(cmd):
            procs.append(p)
    return procs


@pytest.mark.e2e
def test_killed_process_resumes_to_the_same_weights(trained, tmp_path):
    runs = tmp_path / "runs"
    keys = STEPS + TWO + ["train.save_steps=2"]
    log = open(tmp_path / "killed.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_M1A, str(runs), "killed", *keys], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=log)
    saved = Store(runs, "killed").checkpoint_staging(1, "m1a") / "_trainer" / "checkpoint-2"
    deadline = time.time() + 600
    while not ((saved / "trainer_state.json").is_file() and (saved / "rng_state_1.pth").is_file()) \
            and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victims = _training_processes(proc.pid)
    assert len(victims) == 2, f"expected two training processes, found {[v.cmdline() for v in victims]}"
    rank1 = next(v for v in victims if v.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    log.seek(0)
    err = log.read()
    assert proc.returncode != 0, "the training was not stopped by the kill"
    assert "failed" in err and "rerun the build to resume" in err, err[-3000:]
    assert not Store(runs, "killed").checkpoint_done(1, "m1a")
    _, alive = psutil.wait_procs(victims, timeout=30)
    assert not alive, "rank 0 outlived the training"  # torchrun ended it with rank 1

    out = train_m1a(runs, "killed", *keys).stderr
    assert "sft: resuming from checkpoint-" in out
    # the same two processes, never stopped and never saving on the way: the same weights, bit for bit
    a, b = weights(runs, "killed"), weights(trained, "two")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.e2e
def test_ray_trains_m2_on_a_worker_as_local_training_does(tmp_path):
    """Round 2 built locally on one torch thread; then its m2 trained again by ``executor=ray``
    on a worker of a local Ray instance (one CPU, so one thread): the same checkpoint."""
    runs = tmp_path / "runs"
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    build = lambda run, *keys: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "alma_data", "build", "round=2", "recipe=tiny", f"runs_dir={runs}", f"run={run}", *keys],
        capture_output=True, text=True, env=env, timeout=900)
    local = build("local")
    assert local.returncode == 0, local.stderr[-4000:]
    shutil.copytree(runs / "local", runs / "ray")
    shutil.rmtree(runs / "ray" / "round=2" / "checkpoints" / "m2")
    proc = subprocess.Popen([sys.executable, "-m", "alma_data", "build", "round=2", "recipe=tiny", f"runs_dir={runs}",
                             "run=ray", "executor=ray", "ray.num_workers=1", "ray.train_cpus=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-4000:]
    assert "ray: training round=2/m2 as a Ray task with 0 GPUs and 1 CPUs" in err
    assert "[round 2] responses: already done" in err
    m_ray, m_local = Store(runs, "ray").checkpoint_manifest(2, "m2"), Store(runs, "local").checkpoint_manifest(2, "m2")
    by = m_ray["training"]["run_by"]
    # trained in a Ray worker process, not in the build's (which held no model)
    assert by["executor"] == "ray" and not by["process"].endswith(f" pid {proc.pid}")
    assert m_local["training"]["run_by"]["executor"] == "local"
    a, b = weights(runs, "ray", 2, "m2"), weights(runs, "local", 2, "m2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the same bytes, so the same checkpoint hash: what was built from m2 stands
    assert m_ray["hash"] == m_local["hash"]


@pytest.mark.e2e
def test_ray_spreads_one_training_over_two_machines(trained, tmp_path):
    """``ray.train_nodes=2``: two Ray tasks, each ``accelerate launch`` of one process as machine
    0 and 1 of the same training (here both on this machine's local Ray, which has one node):
    the same bits as the two processes of one launch."""
    runs = tmp_path / "runs"
    out = train_m1a(runs, "nodes", *STEPS, *TWO, "executor=ray", "ray.train_nodes=2", "ray.train_cpus=1").stderr
    assert "ray: training round=1/m1a over 2 nodes, 1 processes each" in out
    m = Store(runs, "nodes").checkpoint_manifest(1, "m1a")
    assert m["training"]["world_size"] == 2 and m["training"]["run_by"]["nodes"] == 2
    a, b = weights(runs, "nodes"), weights(trained, "two")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
