"""The judge's score reading on the transformers engine: peak memory and responses/s of the
few-shot base judge (``judge=base shots=3``) and of the zero-shot judge on the same pairs, for
the code before a change (a git revision) and the working tree's, in one run (issue 23).

    python benchmarks/judge_memory.py                          # 32 pairs, SmolLM2-135M, before=main
    python benchmarks/judge_memory.py --pairs 24 --before HEAD~1 --model PATH --json out.json

Each (code, judge) is measured in its own process, started fresh (``--step``): the model is
opened as ``alma-data judge`` opens it (``open_any_judge`` on the recipe, so its engine, dtype
and ``judge.batch_size_score``), then one ``Judge.score`` call scores every pair, as the judge
stage does. Measured around that call only: its seconds (responses/s) and its peak resident
memory (``alma_data.memory.StagePeak``: VmHWM reset at the start, read at the end), beside the
process's whole peak (VmHWM, the model's load included). The code before is ``git archive
REV alma_data`` unpacked in the work folder and put first on ``PYTHONPATH``.

The pairs are the recipe's seed judge annotations that are not among the shots, in file order.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def step(args) -> dict:
    from alma_data.config import load_recipe
    from alma_data.judges import open_any_judge, seed_shots
    from alma_data.memory import StagePeak, _status_kib

    overrides = {"model": args.model} if args.model else {}
    overrides.update(dict(kv.split("=", 1) for kv in args.set))
    recipe = load_recipe(args.recipe, overrides)
    judge = open_any_judge("base", recipe, shots=args.shots, seed=0)
    shots = {(s.prompt, s.response) for s in judge.shots}
    pool = [(a.prompt, a.response) for a in seed_shots(None, recipe) if (a.prompt, a.response) not in shots]
    pairs = pool[: args.pairs]
    tok = judge.tokenizer
    questions = [judge.question(p, r) for p, r in pairs]
    lengths = [len(tok(q, add_special_tokens=False).input_ids) for q in questions]
    from alma_data.engines.transformers_engine import common_prefix

    head = len(common_prefix([tok(q, add_special_tokens=False).input_ids for q in questions]))
    peak = StagePeak().start()
    t0 = time.perf_counter()
    _, scores, _ = judge.score([p for p, _ in pairs], [r for _, r in pairs])
    seconds = time.perf_counter() - t0
    mem = peak.stop()
    return {"pairs": len(pairs), "seconds": seconds, "responses_per_s": len(pairs) / seconds,
            "score_peak_mib": mem["peak_memory_mib"], "score_start_mib": mem["start_memory_mib"],
            "peak_from": mem["peak_from"], "process_peak_mib": round((_status_kib("VmHWM") or 0) / 1024),
            "dtype": str(judge.engine.dtype).replace("torch.", ""), "score_batch": judge.engine.score_batch,
            "question_tokens_mean": sum(lengths) / len(lengths), "shared_head_tokens": head,
            "scores": [round(float(s), 5) for s in scores]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--shots", type=int, default=3, help="the few-shot judge's examples (the other judge has 0)")
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
            archive = subprocess.run(["git", "archive", rev, "alma_data"], cwd=ROOT, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        codes[f"before ({rev})"] = tree
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "alma_data"], cwd=ROOT, capture_output=True, text=True).stdout
    codes[f"after ({head}{'+changes' if dirty.strip() else ''})"] = ROOT
    results = []
    passthrough = ["--pairs", str(args.pairs), "--recipe", args.recipe, "--model", args.model]
    for s in args.set:
        passthrough += ["--set", s]
    for code, path in codes.items():
        for shots in (args.shots, 0):
            out = work / f"{len(results)}.json"
            env = {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                   "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
            load0 = os.getloadavg()[0]
            subprocess.run([sys.executable, __file__, "--step", "--out", str(out), "--shots", str(shots), *passthrough],
                           env=env, check=True)
            r = json.loads(out.read_text())
            r.update(code=code, shots=shots, load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2))
            results.append(r)
            print(f"{code:22s} shots={shots}: {r['responses_per_s']:.2f} responses/s ({r['seconds']:.1f} s, "
                  f"{r['pairs']} pairs, {r['dtype']}, batch {r['score_batch']}), scoring peak {r['score_peak_mib']} MiB "
                  f"(from {r['score_start_mib']}), process peak {r['process_peak_mib']} MiB; question "
                  f"{r['question_tokens_mean']:.0f} tokens, shared head {r['shared_head_tokens']}; "
                  f"load {r['load_before']} -> {r['load_after']}", flush=True)
    print()
    for code in codes:
        few, zero = [next(r for r in results if r["code"] == code and r["shots"] == s) for s in (args.shots, 0)]
        print(f"{code}: few-shot / zero-shot responses/s = {few['responses_per_s'] / zero['responses_per_s']:.2f}")
    if len(codes) == 2:
        import numpy as np

        for s in (args.shots, 0):
            a, b = [np.array(next(r for r in results if r["code"] == c and r["shots"] == s)["scores"]) for c in codes]
            print(f"shots={s}: largest difference of a real-valued score, before vs after: {np.abs(a - b).max():.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
