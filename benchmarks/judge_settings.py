"""Judge training settings against a preference set: train only the round-1 judge under each
setting and score the set with it, as ``alma-data judge`` does (issue 14, part 5).

    # each --setting is one set of recipe overrides (space-separated); "" is the recipe as it is
    python benchmarks/judge_settings.py tune.jsonl --dir /tmp/judge-settings \\
        --setting "" --setting "judge.learning_rate=3e-4" --setting "judge.max_steps=-1 judge.epochs=1"
    python benchmarks/judge_settings.py tune.jsonl --recipe default --setting "judge.max_steps=36" --json out.json

    # a paired comparison of two judges' scores (parquet files from ``alma-data judge --out``
    # or from this script) on the same pairs: accuracy of A minus accuracy of B
    python benchmarks/judge_settings.py compare best.parquet base.parquet

Each setting gets a fresh runs folder ``DIR/<setting>`` in which a fresh ``python`` process
runs round 1's seed stages (seeds, seed SFT pairs, seed judge annotations: cheap) and the
``train judge`` stage, exactly the stages a build runs (``alma_data.plan.stages_of``), so the
judge learns from the run's seed annotations (the held-out ones excepted) under the recipe
with the setting's overrides. Then ``python -m alma_data judge FILE judge=run:NAME/round=1/judge``
scores the file with it (the same code, the same too-long rule, the same intervals), and the
scores are kept in ``DIR/<setting>/scores.parquet``. A setting already trained is not trained
again (the stage is current), so a second call only scores.

It prints, per setting, the pairwise accuracy of the real-valued and the integer scores
(ties counted wrong and as half) with 95% bootstrap intervals over pairs, the ties, the pairs
measured and left out as too long, the training seconds (the stage's wall time and the
trainer's own) and the scoring seconds. ``compare`` prints the paired difference with a 95%
bootstrap interval over the pairs both judges measured (the same resampled pairs for both).

Run it with ``nice`` on a shared machine (``OMP_WAIT_POLICY=PASSIVE TQDM_DISABLE=1`` are set
for the child processes); a 12-step judge of the default recipe takes about 5 minutes on two
CPU cores, and scoring 100 responses about 1.5.
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

TRAIN = """
import json, sys
from alma_data.config import load_recipe
from alma_data.plan import stages_of
from alma_data.round import check_run
from alma_data.runner import run_stages
from alma_data.stage import Context
from alma_data.store import Store

runs, run, recipe_name, *keys = sys.argv[1:]
recipe = load_recipe(recipe_name, dict(k.split("=", 1) for k in keys))
store = Store(runs, run)
check_run(store, recipe)
ctx = Context(store, recipe, quiet=True)
run_stages(ctx, stages_of(recipe, 1, "prompts", "sft", "judge_seed", "judge"))
print(json.dumps(ctx.records))
"""

RUN = "default"


def slug(setting: list[str]) -> str:
    if not setting:
        return "recipe"
    text = "_".join(k.replace("judge.", "") for k in setting)
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)


def env() -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def train(runs: Path, recipe: str, setting: list[str]) -> dict:
    """Round 1's seed stages and judge stage in a fresh process; the stage records and the
    checkpoint's training summary."""
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", TRAIN, str(runs), RUN, recipe, *setting], env=env(), cwd=ROOT,
                         check=True, stdout=subprocess.PIPE, text=True)
    wall = time.time() - t0
    records = json.loads(out.stdout.strip().splitlines()[-1])
    from alma_data.store import Store

    training = Store(str(runs), RUN).checkpoint_manifest(1, "judge")["training"]
    stage = next(r for r in records if r["stage"] == "train judge")
    return {"process_seconds": round(wall, 1), "stage_seconds": stage["seconds"], "skipped": stage["skipped"],
            "trainer_seconds": training.get("seconds"), "examples": training.get("examples"),
            "steps": training.get("steps"), "train_loss": training.get("train_loss")}


def score(pairs: str, runs: Path, extra: list[str]) -> dict:
    """``alma-data judge`` on the file with this runs folder's round-1 judge."""
    out_file = runs / "scores.parquet"
    cmd = [sys.executable, "-m", "alma_data", "judge", pairs, f"judge=run:{RUN}/round=1/judge", f"runs_dir={runs}",
           *extra, "--format", "json", "--quiet", "--out", str(out_file)]
    out = subprocess.run(cmd, env=env(), cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout)


def fmt(t) -> str:
    point, low, high = t
    return f"{point:.3f} [{low:.3f}, {high:.3f}]"


def cmd_settings(args) -> None:
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    results = []
    for raw in args.setting:
        setting = raw.split()
        runs = base / slug(setting)
        print(f"== {raw or '(recipe as it is)'}  ->  {runs}", file=sys.stderr, flush=True)
        t = train(runs, args.recipe, setting)
        print(f"   trained in {t['stage_seconds']:.0f}s ({t['steps']} steps, {t['examples']} examples, "
              f"train loss {t['train_loss']:.3f}"
              + (", already current" if t["skipped"] else "") + ")", file=sys.stderr, flush=True)
        s = score(args.pairs, runs, args.judge_arg)
        results.append({"setting": raw, "runs_dir": str(runs), "training": t, "scores": s})
        print(f"   scored in {s['seconds']:.0f}s: real-valued {fmt(s['real_valued']['accuracy_ties_wrong'])}",
              file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\n{args.pairs}: judge settings of recipe={args.recipe} (round-1 judge, seed annotations)")
    head = (f"{'setting':<44} {'real, ties wrong':<22} {'real, ties half':<22} {'ties':>4} "
            f"{'integer, ties wrong':<22} {'integer, ties half':<22} {'ties':>4} {'pairs':>5} {'long':>4} "
            f"{'steps':>5} {'train s':>7} {'score s':>7}")
    print(head)
    for r in results:
        s, t = r["scores"], r["training"]
        rv, iv = s["real_valued"], s["integer"]
        print(f"{(r['setting'] or '(recipe)'):<44} {fmt(rv['accuracy_ties_wrong']):<22} {fmt(rv['accuracy_ties_half']):<22} "
              f"{rv['ties']:>4} {fmt(iv['accuracy_ties_wrong']):<22} {fmt(iv['accuracy_ties_half']):<22} {iv['ties']:>4} "
              f"{s['pairs_measured']:>5} {s['pairs_too_long']:>4} {t['steps']!s:>5} {t['stage_seconds']:>7.0f} "
              f"{s['seconds']:>7.0f}")
    print("[95% bootstrap intervals over pairs; train s: the train judge stage's wall time]")


def outcomes(path: str, which: str) -> dict[int, float]:
    import pyarrow.parquet as pq

    from alma_data.intervals import pair_outcomes

    t = pq.read_table(path).to_pandas()
    t = t[~t["too_long"]]
    if which == "real":
        a, b = t["score_chosen"].to_numpy(float), t["score_rejected"].to_numpy(float)
    else:
        a, b = t["score_int_chosen"].to_numpy(float), t["score_int_rejected"].to_numpy(float)
    ok = np.isfinite(a) & np.isfinite(b)
    o = pair_outcomes(a[ok], b[ok])
    return dict(zip(t["row"].to_numpy()[ok].tolist(), o.tolist()))


def paired(a: dict[int, float], b: dict[int, float], *, seed: int = 0) -> dict:
    """Accuracy of A minus B on the pairs both measured, ties wrong and ties half, each with
    a paired bootstrap interval (the same resampled pairs for both judges)."""
    from alma_data.intervals import bootstrap

    rows = sorted(set(a) & set(b))
    oa, ob = np.array([a[r] for r in rows]), np.array([b[r] for r in rows])
    wrong = (oa == 1.0).astype(float) - (ob == 1.0).astype(float)
    half = oa - ob
    return {"pairs": len(rows), "ties_wrong": bootstrap(wrong, seed=seed), "ties_half": bootstrap(half, seed=seed),
            "a_ties_wrong": float((oa == 1.0).mean()), "b_ties_wrong": float((ob == 1.0).mean()),
            "a_ties_half": float(oa.mean()), "b_ties_half": float(ob.mean())}


def cmd_compare(args) -> None:
    out = {}
    for which in ("real", "integer"):
        d = paired(outcomes(args.a, which), outcomes(args.b, which))
        out[which] = d
        print(f"{which:<8} on {d['pairs']} pairs: A {d['a_ties_wrong']:.3f} vs B {d['b_ties_wrong']:.3f} (ties wrong), "
              f"A - B {d['ties_wrong'][0]:+.3f} [{d['ties_wrong'][1]:+.3f}, {d['ties_wrong'][2]:+.3f}]; "
              f"ties half A {d['a_ties_half']:.3f} vs B {d['b_ties_half']:.3f}, "
              f"A - B {d['ties_half'][0]:+.3f} [{d['ties_half'][1]:+.3f}, {d['ties_half'][2]:+.3f}]")
    print(f"[A = {args.a}, B = {args.b}; paired 95% bootstrap intervals over pairs]")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        ap = argparse.ArgumentParser(prog="judge_settings.py compare", description="paired difference A - B")
        ap.add_argument("a")
        ap.add_argument("b")
        ap.add_argument("--json")
        cmd_compare(ap.parse_args(sys.argv[2:]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", help="a preference file alma-data judge reads ({prompt, chosen, rejected} rows)")
    ap.add_argument("--dir", default="/tmp/alma-judge-settings", help="one runs folder per setting under it")
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--setting", action="append", default=None,
                    help="recipe overrides, space-separated (repeat for more settings; '' = the recipe)")
    ap.add_argument("--judge-arg", action="append", default=[], help="extra KEY=VALUE for alma-data judge")
    ap.add_argument("--json", help="write the results here as well")
    args = ap.parse_args()
    if args.setting is None:
        args.setting = [""]
    cmd_settings(args)


if __name__ == "__main__":
    main()
