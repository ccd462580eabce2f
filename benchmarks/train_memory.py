"""Peak memory and speed of a training, as a build's stage runs it, each in a fresh process.

    python benchmarks/train_memory.py [sft judge ...] [--precision auto|float32|bfloat16] [--steps 3]
    python benchmarks/train_memory.py --one sft|judge|soft|dpo [--plain] [--model smollm2-135m] [--steps 3]

Without ``--one`` it trains each of the trainings named (default: ``sft`` and ``judge``, the
default recipe's two) twice, each in its own process: ``after``, with the CPU LM head of
training/lm_head.py and the heap trimmed between layers (training/heap.py), and ``before``
(``--plain``), with TRL's own fused-head forward and no trimming; it prints a line each: peak
resident memory, steps a second, the training loss. ``--one`` is one such run.

``sft``: the policy's SFT on the bundled seed pairs with the default recipe's train.* settings
(batch 8, max_length 256); ``judge``: the judge's SFT on the bundled annotations (batch 8,
max_length 384); ``soft``: the same with a teacher distribution on every other row (the
soft-target distillation of judge.distill_target=soft); ``dpo``: DPO on pairs made from the
annotations (best against worst answer of a group) with train.* settings. It prints the
process's peak resident memory (VmHWM, ru_maxrss) before and after the training, and what
it holds after loading the libraries. Run it with ``PYTHONPATH`` at the checkout to measure,
and say the load (``uptime``) beside the figures: the cores may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "data" / "seed" / name).read_text().splitlines() if line.strip()]


def hwm_mib() -> float:
    """VmHWM: the peak resident set of this process (Linux), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_mib()


def compare(args) -> None:
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1, 5, 15 min); "
          f"precision {args.precision}, {args.steps} steps", flush=True)
    for what in args.what or ["sft", "judge"]:
        for label, extra in (("before", ["--plain"]), ("after", [])):
            cmd = [sys.executable, __file__, "--one", what, "--model", args.model, "--steps", str(args.steps),
                   "--precision", args.precision, *extra]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{what} {label}: failed\n{proc.stderr[-3000:]}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{what:5s} {label:6s} ({r['lm_head']:25s}): peak {r['peak_mib'] / 1024:.2f} GiB "
                  f"({r['peak_before_training_mib'] / 1024:.2f} before training), {r['steps_per_s']:.4f} steps/s "
                  f"({r['train_seconds']:.1f} s for {r['steps']} steps), loss {r['loss']:.6f}, "
                  f"{'bf16' if r['bf16'] else 'float32'}, load {r['load']:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="*", help="sft, judge, soft, dpo (default: sft judge)")
    ap.add_argument("--one", choices=["sft", "judge", "soft", "dpo"], help="one training in this process")
    ap.add_argument("--plain", action="store_true", help="TRL's own fused-head forward, not training/lm_head.py's")
    ap.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="train.bf16: auto (what this machine computes natively), false, true")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    if set(args.what) - {"sft", "judge", "soft", "dpo"}:
        ap.error(f"unknown training {sorted(set(args.what) - {'sft', 'judge', 'soft', 'dpo'})}: sft, judge, soft, dpo")
    if args.one is None:
        return compare(args)
    args.what = args.one

    import datasets
    import torch

    import training.heap
    import training.lm_head

    from alma_data.launchers import train_here
    from alma_data.models import resolve
    from alma_data.precision import resolve_bf16
    from alma_data.prompting import judge_question, judge_target
    from training import TrainSpec

    torch.manual_seed(0)
    training.lm_head.ENABLED = training.heap.ENABLED = not args.plain
    bf16 = resolve_bf16({"auto": "auto", "float32": False, "bfloat16": True}[args.precision])
    if args.what == "sft":
        data = [{"prompt": r["prompt"], "completion": r["response"]} for r in rows("sft.jsonl")]
        spec = TrainSpec(batch_size=8, max_length=256, max_steps=args.steps, learning_rate=5e-5, bf16=bf16, seed=1)
        trainer = "sft"
    elif args.what in ("judge", "soft"):
        data = [{"prompt": judge_question(r["prompt"], r["response"], 10), "completion": judge_target(int(r["score"]))}
                for r in rows("judge.jsonl")]
        if args.what == "soft":
            for i, d in enumerate(data):
                p = [0.0] * 11
                p[int(d["completion"].split("[[")[1].split("]]")[0])] = 0.7
                p[(i % 11)] += 0.3
                d["target_probs"] = p if i % 2 == 0 else []
        spec = TrainSpec(batch_size=8, max_length=384, max_steps=args.steps, learning_rate=1e-4, bf16=bf16, seed=0)
        trainer = "sft_soft" if args.what == "soft" else "sft"
    else:
        groups: dict[str, list[dict]] = {}
        for r in rows("judge.jsonl"):
            groups.setdefault(r["group"], []).append(r)
        data = []
        for g in groups.values():
            g = sorted(g, key=lambda r: r["score"])
            if len(g) > 1 and g[-1]["score"] > g[0]["score"]:
                data.append({"prompt": g[0]["prompt"], "chosen": g[-1]["response"], "rejected": g[0]["response"]})
        spec = TrainSpec(batch_size=8, max_length=256, max_steps=args.steps, learning_rate=5e-5, bf16=bf16, seed=0)
        trainer = "dpo"
    if trainer == "sft_soft":
        features = datasets.Features({"prompt": datasets.Value("string"), "completion": datasets.Value("string"),
                                      "target_probs": datasets.Sequence(datasets.Value("float32"))})
        ds = datasets.Dataset.from_list(data, features=features)
    else:
        ds = datasets.Dataset.from_list(data)
    before = peak_mib()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_here(trainer, resolve(args.model), ds, Path(tmp) / "out", spec, 0.1,
                             lambda m: print(m, file=sys.stderr))
    print(json.dumps({"what": args.what, "model": args.model, "steps": summary["steps"], "bf16": bf16,
                      "lm_head": "TRL's fused head" if args.plain else "training/lm_head.py + heap",
                      "loss": round(summary["train_loss"], 6), "seconds": round(time.time() - t0, 1),
                      "train_seconds": summary["seconds"], "steps_per_s": summary["steps"] / summary["seconds"],
                      "peak_before_training_mib": round(before), "peak_mib": round(max(peak_mib(), hwm_mib())),
                      "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
