"""A build killed while training resumes the training from its last saved state
(``train.save_steps``) and ends with the weights an uninterrupted training gives."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from alma_data.store import Store
from conftest import run_cli

KEYS = ["round=1", "recipe=tiny", "train.max_steps=8"]


@pytest.mark.e2e
def test_a_killed_training_resumes_to_the_same_weights(tmp_path):
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "alma_data", "build", *KEYS, f"runs_dir={runs}", "run=killed", "train.save_steps=4"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    staging = Store(runs, "killed").checkpoint_staging(1, "m1a")
    saved = staging / "_trainer" / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 300
    while not saved.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert saved.is_file(), "the build ended before it saved step 4"
    assert not Store(runs, "killed").checkpoint_done(1, "m1a")

    out = run_cli("build", *KEYS, f"runs_dir={runs}", "run=killed", "train.save_steps=4").stderr
    assert "sft: resuming from checkpoint-" in out
    resumed = Store(runs, "killed")
    m = resumed.checkpoint_manifest(1, "m1a")
    assert m["training"]["steps"] == 8
    assert not staging.exists() and "_resume.json" not in {f["file"] for f in m["files"]}
    assert not any(f["file"].startswith("_trainer") for f in m["files"])

    # The same recipe, never stopped and never saving on the way: the same weights, bit for bit.
    run_cli("build", *KEYS, f"runs_dir={runs}", "run=straight")
    a = load_file(resumed.checkpoint_dir(1, "m1a") / "model.safetensors")
    b = load_file(Store(runs, "straight").checkpoint_dir(1, "m1a") / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # train.save_steps is about how a build runs, not what it makes: no recipe change
    assert json.loads((runs / "killed" / "run.json").read_text())["fingerprint"] == \
        Store(runs, "straight").read_run()["fingerprint"]


def test_stale_saves_of_another_configuration_are_not_resumed(tmp_path):
    runs = tmp_path / "runs"
    staging = Store(runs, "r").checkpoint_staging(1, "m1a")
    (staging / "_trainer" / "checkpoint-4").mkdir(parents=True)
    (staging / "_trainer" / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (staging / "_resume.json").write_text(json.dumps({"config_hash": "another", "inputs": {}, "base": "x"}))
    out = run_cli("build", "round=1", "recipe=tiny", f"runs_dir={runs}", "run=r", "train.save_steps=4").stderr
    assert "resuming" not in out
    assert Store(runs, "r").checkpoint_manifest(1, "m1a")["training"]["steps"] == 2
