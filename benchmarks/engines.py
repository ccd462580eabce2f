"""Engine benchmarks: sampling tokens/s and judge pairs/s against plain loops, in one run.

    python benchmarks/engines.py                      # the issue's setting: 32 prompts x N=8 x 128 tokens
    python benchmarks/engines.py --prompts 8 --n 4    # quicker
    python benchmarks/engines.py --only judge         # one section (sample, judge, vllm)
    python benchmarks/engines.py --only vllm          # on a GPU with the gpu extra: N=200 per prompt

Every measured step runs in its own subprocess (``--step NAME``), so its peak memory is
its own (``os.wait4``'s maximum resident set). Steps:

- ``plain``: the loop a user writes first: ``AutoModelForCausalLM.from_pretrained`` (the
  checkpoint's own dtype) and ``model.generate`` on one sequence at a time. It runs on the
  first ``--plain-seqs`` sequences only (it is slow); its tokens/s is the baseline.
- ``plain_bf16``: the same loop with the model in bfloat16 (what our engine uses on a
  CPU with native bf16), so the batching gain is shown apart from the dtype gain.
- ``engine``: alma-data's TransformersEngine on all prompts x N samples.
- ``judge_plain``: one forward pass per (prompt, response) pair, no batching, no shared
  cache: the probabilities of the candidates "0".."10" (multi-token ones fed in a second
  pass on a copy of the cache).
- ``judge``: the engine's ``score_candidates`` with its batch.
- ``vllm_plain`` / ``vllm_engine`` (GPU): vLLM's own ``LLM.generate`` with ``n=--vllm-n`` on
  the same prompts (the same token ids, tokenised outside its timing), against alma-data's
  VLLMEngine (per-request seeds, token-id prompts, tokenised inside its timing).

Prompts are the bundled seed prompts; judged responses are the first samples of the
``engine`` step when it ran, else fixed seed answers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def seed_rows(k: int) -> list[dict]:
    from alma_data.resources import resource_dir

    rows = [json.loads(line) for line in (resource_dir("seed") / "sft.jsonl").read_text().splitlines() if line.strip()]
    return rows[:k]


def rendered_prompts(tok, k: int) -> list[str]:
    from alma_data.prompting import render_chat

    return [render_chat(tok, r["prompt"]) for r in seed_rows(k)]


# -- steps (each in a subprocess) ----------------------------------------------------------------
def step_plain(args, dtype: str | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    kwargs = {"dtype": torch.bfloat16} if dtype == "bfloat16" else {}
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs).eval()
    prompts = rendered_prompts(tok, args.prompts)
    seqs = [(p, j) for p in prompts for j in range(args.n)][: args.plain_seqs]
    torch.manual_seed(0)
    tokens, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for prompt, _ in seqs:
            ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
            out = model.generate(ids, do_sample=True, temperature=args.temperature, top_p=0.95, top_k=None,
                                 max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id or tok.eos_token_id)
            tokens += out.shape[1] - ids.shape[1]
    seconds = time.perf_counter() - t0
    return {"sequences": len(seqs), "tokens": tokens, "seconds": seconds, "dtype": str(model.dtype)}


def step_engine(args) -> dict:
    from alma_data.engines import SamplingParams, load_engine

    engine = load_engine("transformers", args.model, dtype=args.dtype, batch_rows=args.batch_rows,
                         memory_budget_gb=args.kv_cache_gb)
    prompts = rendered_prompts(engine.tokenizer, args.prompts)
    t0 = time.perf_counter()
    out = engine.generate(prompts, SamplingParams(n=args.n, temperature=args.temperature, top_p=0.95,
                                                  max_new_tokens=args.max_new_tokens, seed=0))
    seconds = time.perf_counter() - t0
    tokens = sum(s.n_tokens for row in out for s in row)
    rows = engine.rows_per_batch(max(len(engine.tokenizer(p).input_ids) for p in prompts) + args.max_new_tokens)
    answers = [row[0].text for row in out]
    (Path(args.work) / "answers.json").write_text(json.dumps(answers))
    return {"sequences": sum(len(r) for r in out), "tokens": tokens, "seconds": seconds,
            "dtype": str(engine.dtype), "batch_rows": rows}


def judge_pairs(args) -> tuple[list[str], list[str]]:
    rows = seed_rows(args.pairs)
    answers_file = Path(args.work) / "answers.json"
    answers = json.loads(answers_file.read_text()) if answers_file.exists() else []
    responses = [answers[i] if i < len(answers) and answers[i] else r["response"] for i, r in enumerate(rows)]
    return [r["prompt"] for r in rows], responses


def step_judge(args, plain: bool) -> dict:
    import numpy as np

    from alma_data.engines.transformers_engine import TransformersEngine
    from alma_data.prompting import RATING_PREFIX, RATING_SUFFIX, judge_question, render_chat

    engine = TransformersEngine(args.model, dtype=args.judge_dtype, score_batch=1 if plain else args.score_batch)
    prompts, responses = judge_pairs(args)
    questions = [render_chat(engine.tokenizer, judge_question(p, r)) + RATING_PREFIX for p, r in zip(prompts, responses)]
    candidates = [str(s) for s in range(11)]
    t0 = time.perf_counter()
    if plain:
        # One pair at a time: a forward pass over the question without a cache shared with
        # anything, then the candidates' remaining tokens on copies of its cache.
        probs = np.vstack([engine.score_candidates([q], candidates, suffix=RATING_SUFFIX) for q in questions])
    else:
        probs = engine.score_candidates(questions, candidates, suffix=RATING_SUFFIX)
    seconds = time.perf_counter() - t0
    score = (probs * np.arange(11)).sum(-1)
    tokens = sum(len(engine.tokenizer(q).input_ids) for q in questions)
    return {"pairs": len(questions), "seconds": seconds, "prompt_tokens": tokens, "dtype": str(engine.dtype)[6:],
            "scores": [round(float(s), 4) for s in score]}


def step_vllm(args, ours: bool) -> dict:
    """N samples for every prompt through vLLM: its own ``LLM.generate``, or our engine."""
    from alma_data.engines import SamplingParams
    from alma_data.engines.vllm_engine import VLLMEngine, require_vllm

    vllm = require_vllm()
    engine = VLLMEngine(args.model)  # the same LLM settings for both: the recipe's defaults
    prompts = rendered_prompts(engine.tokenizer, args.prompts)
    params = SamplingParams(n=args.vllm_n, temperature=args.temperature, top_p=0.95,
                            max_new_tokens=args.max_new_tokens, seed=0)
    engine.generate(prompts[:2], SamplingParams(n=2, max_new_tokens=8))  # warm-up (graphs, kernels)
    # The same token ids as our engine sends: a text prompt would be tokenised by vLLM
    # with add_special_tokens=True (a second BOS on tokenizers that add one).
    requests = [{"prompt_token_ids": engine.tokenizer(p, add_special_tokens=False).input_ids} for p in prompts]
    t0 = time.perf_counter()
    if ours:
        out = engine.generate(prompts, params)
        tokens = sum(s.n_tokens for row in out for s in row)
    else:
        sp = vllm.SamplingParams(n=args.vllm_n, temperature=args.temperature, top_p=0.95,
                                 max_tokens=args.max_new_tokens, seed=0)
        res = engine.llm.generate(requests, sp, use_tqdm=False)
        # Counted as our engine counts: without the EOS token that ends a sequence.
        tokens = sum(len(c.token_ids) - (c.finish_reason == "stop" and not isinstance(c.stop_reason, str))
                     for r in res for c in r.outputs)
    seconds = time.perf_counter() - t0
    return {"sequences": len(prompts) * args.vllm_n, "tokens": tokens, "seconds": seconds, "dtype": "bfloat16"}


STEPS = {
    "plain": lambda a: step_plain(a, None),
    "plain_bf16": lambda a: step_plain(a, "bfloat16"),
    "engine": step_engine,
    "judge_plain": lambda a: step_judge(a, True),
    "judge": lambda a: step_judge(a, False),
    "vllm_plain": lambda a: step_vllm(a, False),
    "vllm_engine": lambda a: step_vllm(a, True),
}
SECTIONS = {"sample": ["plain", "plain_bf16", "engine"], "judge": ["judge_plain", "judge"],
            "vllm": ["vllm_plain", "vllm_engine"]}


def run_step(name: str, argv: list[str]) -> dict:
    out = Path(ARGS.work) / f"{name}.json"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--step", name, *argv])
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"step {name} failed (exit status {status}); its output is above")
    result = json.loads(out.read_text())
    result["peak_gib"] = usage.ru_maxrss / 2**20
    result["wall"] = time.perf_counter() - t0
    return result


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local folder or Hub id")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--plain-seqs", type=int, default=16, help="sequences the plain loops run (they are slow)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-rows", type=int, default=0, help="0: from --kv-cache-gb")
    p.add_argument("--kv-cache-gb", type=float, default=2.0)
    p.add_argument("--vllm-n", type=int, default=200, help="samples per prompt in the vllm section")
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--score-batch", type=int, default=8)
    p.add_argument("--judge-dtype", default="float32", help="the recipe's judge.dtype default")
    p.add_argument("--only", default="sample,judge")
    p.add_argument("--work", default="/tmp/alma-bench-engines")
    p.add_argument("--step", help=argparse.SUPPRESS)
    ARGS = args = p.parse_args()
    from alma_data.models import resolve

    args.model = resolve(args.model)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.step:
        result = STEPS[args.step](args)
        (Path(args.work) / f"{args.step}.json").write_text(json.dumps(result))
        return
    argv = [a for a in sys.argv[1:]]
    results = {}
    for section in args.only.split(","):
        for name in SECTIONS[section]:
            print(f"-- {name} ...", file=sys.stderr, flush=True)
            results[name] = run_step(name, argv)
    print()
    if "engine" in results:
        base = results["plain"]
        base_rate = base["tokens"] / base["seconds"]
        for name in ("plain", "plain_bf16", "engine"):
            r = results[name]
            rate = r["tokens"] / r["seconds"]
            extra = f", batch {r['batch_rows']} rows" if "batch_rows" in r else ""
            print(f"sampling {name:<11} {r['sequences']:>4} seqs {r['tokens']:>6} tokens in {r['seconds']:7.1f}s: "
                  f"{rate:7.1f} tok/s ({rate / base_rate:5.1f}x plain), {r['dtype']}{extra}, peak {r['peak_gib']:.2f} GiB")
    if "judge" in results:
        base = results["judge_plain"]
        for name in ("judge_plain", "judge"):
            r = results[name]
            rate = r["pairs"] / r["seconds"]
            print(f"judging  {name:<11} {r['dtype']:<8} {r['pairs']:>4} pairs ({r['prompt_tokens']} prompt tokens) in {r['seconds']:6.1f}s: "
                  f"{rate:6.2f} pairs/s ({rate / (base['pairs'] / base['seconds']):4.1f}x plain), peak {r['peak_gib']:.2f} GiB")
        diff = max(abs(a - b) for a, b in zip(results["judge"]["scores"], base["scores"]))
        print(f"judging  largest score difference batched vs one at a time: {diff:.4f}")
    if "vllm_engine" in results:
        plain, ours = results["vllm_plain"], results["vllm_engine"]
        for name, r in (("vllm_plain", plain), ("vllm_engine", ours)):
            print(f"vllm     {name:<11} {r['sequences']:>6} seqs {r['tokens']:>8} tokens in {r['seconds']:7.1f}s: "
                  f"{r['tokens'] / r['seconds']:9.0f} tok/s, peak {r['peak_gib']:.2f} GiB (host)")
        overhead = (plain["tokens"] / plain["seconds"]) / (ours["tokens"] / ours["seconds"]) - 1
        print(f"vllm     our overhead against LLM.generate: {overhead * 100:+.1f}% (target under 10%)")


if __name__ == "__main__":
    main()
