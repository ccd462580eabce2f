"""The lab's cheapest figure, one setting at a time: the round-1 judge's accuracy on the lab's
test pairs (issue 22), for tuning the judge on the development seeds.

    # each --setting is one set of recipe=lab overrides (space-separated); "" is the recipe as it is
    nice -n 19 python benchmarks/lab_judge.py --seeds 0 --dir /tmp/labjudge \\
        --setting "" --setting "judge.max_steps=300" --setting "judge.max_steps=300 judge.learning_rate=3e-3"
    nice -n 19 python benchmarks/lab_judge.py --seeds 0,1,2 --setting "judge.max_steps=600" --log notes.md

For every (setting, seed) a fresh runs folder ``DIR/<setting>/s<seed>`` gets, in a fresh
``python`` process, round 1's seed stages and its ``train judge`` stage only, exactly the
stages a build runs (``alma_data.plan.stages_of``) under ``recipe=lab`` with the lab's seed
overrides (``alma_data.lab.runner.seed_overrides``) and the setting's. The judge is then
scored on the lab's test pairs exactly as ``alma-data lab`` scores them
(``alma_data.lab.measure.judge_on_pairs`` on ``judge_test_pairs``, the recipe's seed prompts
excluded): pairwise accuracy with ties counted as half, real-valued and integer, each with a
95% percentile bootstrap interval over the pairs, and the paired difference real - integer.

Seeds 100 and above are the lab's report seeds and are refused (tuning never sees them).
A judge already trained is not trained again (its stage is current), so a second call only
scores. A setting that trains on other seed files (``seeds.judge=FILE``) is measured on
the same test pairs less those whose prompt is in its files (the count is reported).
Each result is one JSON line in ``DIR/results.jsonl``; ``--log FILE`` appends a
Markdown line per result to a tuning log as well. Run it with ``nice`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPORT_SEEDS_FROM = 100
RUN = "lab"

TRAIN = """
import json, sys
import alma_data.lab  # registers lab-tiny and the other lab models
from alma_data.config import load_recipe
from alma_data.lab.runner import check_base_model
from alma_data.plan import stages_of
from alma_data.round import check_run
from alma_data.runner import run_stages
from alma_data.stage import Context
from alma_data.store import Store

runs, run, *keys = sys.argv[1:]
recipe = load_recipe("lab", dict(k.split("=", 1) for k in keys))
check_base_model(recipe.model)
store = Store(runs, run)
check_run(store, recipe, True)
ctx = Context(store, recipe, quiet=True)
run_stages(ctx, stages_of(recipe, 1, "prompts", "sft", "judge_seed", "judge"))
print(json.dumps(ctx.records))
"""


def slug(setting: list[str]) -> str:
    if not setting:
        return "recipe"
    text = "_".join(k.replace("judge.", "") for k in setting)
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)


def env() -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def train(runs: Path, overrides: dict[str, str]) -> dict:
    t0 = time.time()
    keys = [f"{k}={v}" for k, v in overrides.items()]
    out = subprocess.run([sys.executable, "-c", TRAIN, str(runs), RUN, *keys], env=env(), cwd=ROOT, check=True,
                         stdout=subprocess.PIPE, text=True)
    wall = time.time() - t0
    records = json.loads(out.stdout.strip().splitlines()[-1])
    from alma_data.store import Store

    training = Store(str(runs), RUN).checkpoint_manifest(1, "judge")["training"]
    stage = next(r for r in records if r["stage"] == "train judge")
    return {"process_seconds": round(wall, 1), "stage_seconds": stage["seconds"], "skipped": stage["skipped"],
            "trainer_seconds": training.get("seconds"), "examples": training.get("examples"),
            "steps": training.get("steps"), "train_loss": training.get("train_loss")}


def test_pairs(n: int = 200) -> list[dict]:
    """The lab's judge-test pairs, as :func:`alma_data.lab.measure.measure_lab` makes them."""
    from alma_data.lab.seeds import judge_test_pairs
    from alma_data.seeds import iter_rows

    taken = set()
    for name in ("lab_sft", "lab_judge"):
        taken |= {row["prompt"] for _, row in iter_rows(f"bundled:{name}")}
    return judge_test_pairs(n, exclude=taken)


def seed_prompts(overrides: dict[str, str]) -> set[str]:
    """The prompts of the seed files a setting names beyond the bundled ones (``seeds.sft``,
    ``seeds.judge``): a test pair whose prompt is among them is left out of that setting's figure."""
    from alma_data.seeds import iter_rows

    out: set[str] = set()
    for key in ("seeds.sft", "seeds.judge"):
        source = overrides.get(key, "")
        if source and not source.startswith("bundled:"):
            out |= {row["prompt"] for _, row in iter_rows(source)}
    return out


def measure(runs: Path, pairs: list[dict]) -> dict:
    from alma_data import intervals
    from alma_data.lab.measure import judge_on_pairs
    from alma_data.store import Store

    t0 = time.time()
    o = judge_on_pairs(Store(str(runs), RUN), 1, "judge", pairs)
    real, integer = o["real"], o["integer"]
    return {"real": intervals.bootstrap(real, seed=0), "integer": intervals.bootstrap(integer, seed=0),
            "real_minus_integer": intervals.bootstrap(real - integer, seed=0),
            "real_ties": int((real == 0.5).sum()), "integer_ties": int((integer == 0.5).sum()),
            "pairs": len(pairs), "score_seconds": round(time.time() - t0, 1),
            "outcomes_real": real.tolist(), "outcomes_integer": integer.tolist()}


def fmt(t) -> str:
    return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0", help="development seeds, comma-separated (below 100)")
    ap.add_argument("--dir", default="/tmp/lab-judge")
    ap.add_argument("--setting", action="append", default=None,
                    help="recipe=lab overrides, space-separated (repeat for more; '' = the recipe as it is)")
    ap.add_argument("--pairs", type=int, default=200, help="judge-test prompts (the lab's: 200)")
    ap.add_argument("--log", help="append one Markdown line per result to this file")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if any(s >= REPORT_SEEDS_FROM for s in seeds):
        sys.exit(f"seeds {REPORT_SEEDS_FROM} and above are the lab's report seeds: not for tuning")
    import alma_data.lab  # noqa: F401  (lab-tiny and the other lab models)
    from alma_data.lab.runner import seed_overrides

    pairs = test_pairs(args.pairs)
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    for raw in args.setting if args.setting is not None else [""]:
        setting = raw.split()
        for seed in seeds:
            runs = base / slug(setting) / f"s{seed}"
            overrides = {**seed_overrides(seed), **dict(k.split("=", 1) for k in setting)}
            print(f"== {raw or '(recipe)'} seed {seed} -> {runs}", file=sys.stderr, flush=True)
            taken = seed_prompts(overrides)
            kept = [i for i, p in enumerate(pairs) if p["prompt"] not in taken]
            t = train(runs, overrides)
            m = measure(runs, [pairs[i] for i in kept])
            m["kept"] = kept
            load = os.getloadavg()
            row = {"setting": raw, "seed": seed, "runs": str(runs), "training": t, **m,
                   "load_average": [round(x, 2) for x in load], "when": time.strftime("%Y-%m-%d %H:%M")}
            with open(base / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            line = (f"| {raw or '(recipe)'} | {seed} | {fmt(m['real'])} | {fmt(m['integer'])} | "
                    f"{fmt(m['real_minus_integer'])} | {m['real_ties']}/{m['integer_ties']} | {m['pairs']} | {t['steps']} | "
                    f"{t['train_loss']:.3f} | {t['stage_seconds']:.0f}"
                    + (" (current)" if t["skipped"] else "") + f" | {m['score_seconds']:.0f} | "
                    f"{', '.join(f'{x:.1f}' for x in load)} |")
            print(line, flush=True)
            if args.log:
                with open(args.log, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
