"""The judge's score reading on the transformers engine: peak memory and responses/s of the
few-shot base judge (``judge=base shots=3``) and of the zero-shot judge on the same pairs, for
the code before a change (a git revision) and the working tree's, in one run (issue 23).

    python benchmarks/judge_memory.py                     # 32 pairs, SmolLM2-135M, before=main, 2 rounds
    python benchmarks/judge_memory.py --pairs 24 --before HEAD~1 --model PATH --json out.json
    python benchmarks/judge_memory.py --before ""         # the working tree's code only

Each code is measured in its own fresh process (``--step``). The model is opened as
``alma-data judge`` opens it (``open_any_judge`` on the recipe: its engine, ``judge.dtype``
and ``judge.batch_size_score``); the zero-shot judge is the same engine without the shots.
Then, ``--rounds`` times, the zero-shot judge and the few-shot judge each score every pair in
one ``Judge.score`` call, as the judge stage does, in turn, so that a change of a shared
machine's load falls on both. Measured around each call: its seconds and its peak resident
memory (``alma_data.memory.StagePeak``: VmHWM reset at the call's start, read at its end, so
the model's weights and everything else resident count; the first call also pages the
weights in). Reported: the best and the median responses/s of each judge, the largest peak
of each, and the few-shot / zero-shot ratio of the best and of the medians. The code before
is ``git archive REV alma_data sql pipelines data/seed`` unpacked in the work folder and put
first on ``PYTHONPATH``. The pairs are the recipe's seed judge annotations that are not
among the shots, in file order.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def step(args) -> dict:
    from alma_data.config import load_recipe
    from alma_data.engines.transformers_engine import common_prefix
    from alma_data.judges import Judge, open_any_judge, seed_shots
    from alma_data.memory import StagePeak

    overrides = {"model": args.model} if args.model else {}
    overrides.update(dict(kv.split("=", 1) for kv in args.set))
    recipe = load_recipe(args.recipe, overrides)
    few = open_any_judge("base", recipe, shots=args.shots, seed=0)
    zero = Judge(ref=few.ref, engine=few.engine, scale=few.scale, shots=[])
    shots = {(s.prompt, s.response) for s in few.shots}
    pool = [(a.prompt, a.response) for a in seed_shots(None, recipe) if (a.prompt, a.response) not in shots]
    pairs = pool[: args.pairs]
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    tok, eng = few.tokenizer, few.engine
    out: dict = {"pairs": len(pairs), "dtype": str(eng.dtype).replace("torch.", ""), "score_batch": eng.score_batch,
                 "judges": {}}
    judges = {"zero-shot": zero, f"{args.shots}-shot": few}
    for name, judge in judges.items():
        enc = [tok(judge.question(p, r), add_special_tokens=False).input_ids for p, r in pairs]
        out["judges"][name] = {"question_tokens_mean": sum(map(len, enc)) / len(enc),
                               "shared_head_tokens": len(common_prefix(enc)), "calls": []}
    for rnd in range(args.rounds):
        for name, judge in judges.items():
            load0 = os.getloadavg()[0]
            peak = StagePeak().start()
            t0 = time.perf_counter()
            _, scores, _ = judge.score(prompts, responses)
            seconds = time.perf_counter() - t0
            mem = peak.stop()
            call = {"round": rnd, "seconds": seconds, "responses_per_s": len(pairs) / seconds,
                    "peak_mib": mem["peak_memory_mib"], "start_mib": mem["start_memory_mib"],
                    "peak_from": mem["peak_from"], "load_before": round(load0, 2),
                    "load_after": round(os.getloadavg()[0], 2)}
            out["judges"][name]["calls"].append(call)
            out["judges"][name]["scores"] = [round(float(s), 5) for s in scores]
            print(f"  {name}, round {rnd + 1}: {call['responses_per_s']:.2f} responses/s ({seconds:.1f} s), peak "
                  f"{call['peak_mib']} MiB (from {call['start_mib']}); load {call['load_before']} -> "
                  f"{call['load_after']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--shots", type=int, default=3, help="the few-shot judge's examples")
    ap.add_argument("--rounds", type=int, default=2, help="calls of each judge, in turn")
    ap.add_argument("--before", default="main", help="git revision of the code before (empty: skip it)")
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--model", default="", help="the judge's base model (default: the recipe's)")
    ap.add_argument("--set", action="append", default=[], help="another recipe override KEY=VALUE")
    ap.add_argument("--work", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--step", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        Path(args.out).write_text(json.dumps(step(args)))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="judge-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    codes = {}
    if args.before:
        rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        tree = work / f"code-{rev}"
        if not tree.exists():
            tree.mkdir()
            # the package and the resources a source checkout keeps beside it (alma_data/resources.py)
            archive = subprocess.run(["git", "archive", rev, "alma_data", "sql", "pipelines", "data/seed"], cwd=ROOT,
                                     capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        codes[f"before ({rev})"] = tree
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "alma_data"], cwd=ROOT, capture_output=True, text=True).stdout
    codes[f"after ({head}{'+changes' if dirty.strip() else ''})"] = ROOT
    argv = ["--pairs", str(args.pairs), "--shots", str(args.shots), "--rounds", str(args.rounds),
            "--recipe", args.recipe, "--model", args.model]
    for s in args.set:
        argv += ["--set", s]
    results = {}
    for i, (code, path) in enumerate(codes.items()):
        print(f"{code}:", flush=True)
        out = work / f"{i}.json"
        env = {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
        subprocess.run([sys.executable, __file__, "--step", "--out", str(out), *argv], env=env, check=True)
        results[code] = json.loads(out.read_text())
    print()
    names = list(next(iter(results.values()))["judges"])
    for code, r in results.items():
        rates = {}
        for name in names:
            j = r["judges"][name]
            per_s = [c["responses_per_s"] for c in j["calls"]]
            rates[name] = (max(per_s), statistics.median(per_s))
            print(f"{code:22s} {name:9s}: best {rates[name][0]:.2f}, median {rates[name][1]:.2f} responses/s "
                  f"({r['pairs']} pairs, {r['dtype']}, batch {r['score_batch']}; question "
                  f"{j['question_tokens_mean']:.0f} tokens, {j['shared_head_tokens']} shared), peak "
                  f"{max(c['peak_mib'] for c in j['calls'])} MiB")
        (zb, zm), (fb, fm) = rates[names[0]], rates[names[1]]
        print(f"{code:22s} {names[1]} / zero-shot: {fb / zb:.2f} (best), {fm / zm:.2f} (medians)")
    if len(results) == 2:
        import numpy as np

        before, after = results.values()
        for name in names:
            a, b = (np.array(x["judges"][name]["scores"]) for x in (before, after))
            print(f"{name}: largest difference of a real-valued score, before vs after: {np.abs(a - b).max():.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
