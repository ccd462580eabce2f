"""Peak memory of one training, as a build's stage runs it, in a fresh process.

    python benchmarks/train_memory.py sft|judge|soft|dpo [--model smollm2-135m] [--steps 2]

``sft``: the policy's SFT on the bundled seed pairs with the default recipe's train.* settings
(batch 8, max_length 256); ``judge``: the judge's SFT on the bundled annotations (batch 8,
max_length 384); ``soft``: the same with a teacher distribution on every other row (the
soft-target distillation of judge.distill_target=soft); ``dpo``: DPO on pairs made from the
annotations (best against worst answer of a group) with train.* settings. It prints the
process's peak resident memory (VmHWM, ru_maxrss) before and after the training, and what
it holds after loading the libraries. Run it with ``PYTHONPATH`` at the checkout to measure.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "data" / "seed" / name).read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["sft", "judge", "soft", "dpo"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()

    import datasets
    import torch

    from alma_data.launchers import train_here
    from alma_data.models import resolve
    from alma_data.precision import resolve_bf16
    from alma_data.prompting import judge_question, judge_target
    from training import TrainSpec

    torch.manual_seed(0)
    bf16 = resolve_bf16("auto")
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
                      "loss": round(summary["train_loss"], 6), "seconds": round(time.time() - t0, 1),
                      "peak_before_training_mib": round(before), "peak_mib": round(peak_mib())}))


if __name__ == "__main__":
    main()
