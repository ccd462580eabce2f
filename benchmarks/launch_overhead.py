"""What train.launcher=accelerate costs against training in the build's process, on CPUs.

    python benchmarks/launch_overhead.py                      # m1a of the tiny recipe, 8 steps
    python benchmarks/launch_overhead.py --steps 24 --model smollm2-135m --repeat 2

Each configuration trains m1a of the tiny recipe (44 SFT rows, batch 8, float32) from
nothing in a fresh ``python`` process, as a build does: in-process, ``accelerate launch``
with one process, and with two (gloo). It prints the stage's wall time, the trainer's own
time (``trainer.train``), what the launch added (process starts and imports, writing and
reading the examples, loading the model in each process, the gloo rendezvous), and how
far the weights are from the in-process ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCRIPT = """
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
ctx = Context(store, recipe, quiet=True)
run_stages(ctx, stages_of(recipe, 1, "prompts", "sft", "judge_seed", "m1a"))
"""

CONFIGS = {
    "in-process": [],
    "accelerate, 1 process": ["train.launcher=accelerate", "train.num_processes=1"],
    "accelerate, 2 processes": ["train.launcher=accelerate", "train.num_processes=2"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/alma-launch-bench")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    from safetensors.torch import load_file

    from alma_data.store import Store

    runs = Path(args.dir)
    shutil.rmtree(runs, ignore_errors=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    keys = [f"train.max_steps={args.steps}", "train.bf16=false", f"model={args.model}"]
    rows, reference = [], None
    for rep in range(args.repeat):
        for label, extra in CONFIGS.items():
            run = f"r{rep}-{len(rows)}"
            t0 = time.time()
            subprocess.run([sys.executable, "-c", SCRIPT, str(runs), run, *keys, *extra], env=env, check=True)
            wall = time.time() - t0
            store = Store(runs, run)
            t = store.checkpoint_manifest(1, "m1a")["training"]
            w = load_file(store.checkpoint_dir(1, "m1a") / "model.safetensors")
            if label == "in-process" and reference is None:
                reference = w
            diff = max((w[k] - reference[k]).abs().max().item() for k in w)
            rows.append((label, wall, t.get("launch_seconds", t["seconds"]), t["seconds"],
                         t.get("launch_overhead_seconds", 0.0), t.get("process_start_seconds"), diff))
            print(json.dumps({"config": label, "wall": round(wall, 1), **{k: v for k, v in t.items() if k != "spec"}}),
                  flush=True)
    print(f"\nm1a of the tiny recipe, model {args.model}, {args.steps} steps of 8 examples, float32, "
          f"{os.cpu_count()} CPUs\n")
    print("| launcher | process wall | training stage | trainer.train | launch overhead | rank-0 start + imports | max weight diff vs in-process |")
    print("|---|---|---|---|---|---|---|")
    for label, wall, stage, trainer, overhead, started, diff in rows:
        print(f"| {label} | {wall:.1f} s | {stage:.1f} s | {trainer:.1f} s | {overhead:.1f} s | "
              f"{'' if started is None else f'{started:.1f} s'} | {diff:.2g} |")


if __name__ == "__main__":
    main()
