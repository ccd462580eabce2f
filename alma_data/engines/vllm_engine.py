"""engine=vllm: offline vLLM on local GPUs (the ``gpu`` extra).

Sampling is one ``LLM.generate`` call per batch of prompts with ``SamplingParams(n=N)``.
vLLM (its V1 engine) runs the N samples of a prompt as N child requests; with prefix
caching (``vllm.enable_prefix_caching``) they share the prompt's prefill, as do prompts
that share a head (the few-shot prompts' preamble). Every request gets its own seed,
derived from the call's seed and the prompt's position, so a prompt's samples do not
depend on what else is in the batch; vLLM gives the k-th child ``seed + k``, so the N
samples differ. Prompts are sent as token ids (``{"prompt_token_ids": ...}``), tokenised
here without special tokens as the transformers engine does: a text prompt would be
tokenised by vLLM with ``add_special_tokens=True``.

Score reading: the judge's question followed by each candidate ("0".."10", then the
suffix ``]]``) is sent as token ids with ``prompt_logprobs=0``, which returns, for every
prompt position but the first, the log-probability of the prompt's own token there; a
candidate's log-probability is the sum over its own tokens, so multi-token candidates
("10" is "1","0" for some tokenizers) are read exactly, as the transformers engine does.
``prompt_logprobs=0`` asks for no alternatives, so vLLM's ``max_logprobs`` cap (20) does
not apply. vLLM skips prefix-cache reads for requests that ask for prompt logprobs, so
each (question, candidate) pair is prefilled in full.
"""

from __future__ import annotations

import gc
import hashlib
import time
from dataclasses import replace

import numpy as np

from alma_data.engines.base import Engine, EngineError, Sample, SamplingParams, cut_at_stop


def require_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            "engine=vllm needs vLLM and a GPU: pip install 'alma-data[gpu]' on a CUDA machine, "
            "or use engine=transformers (CPU) or engine=openai (a running server)"
        ) from exc
    return vllm


def request_seed(seed: int, index: int) -> int:
    """A 31-bit seed per request, from the call's seed and the prompt's position."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model_path: str, dtype: str = "auto", options=None, chunk_prompts: int = 4096):
        super().__init__()
        from alma_data.config import VLLMConfig

        opts = options or VLLMConfig()
        if opts.data_parallel_size > 1:
            # vllm.LLM raises for data_parallel_size > 1 in one process (it may hang).
            raise EngineError(
                f"vllm.data_parallel_size={opts.data_parallel_size}: vLLM's offline LLM does not run data "
                "parallelism in one process; run one engine per GPU with executor=ray "
                "ray.num_gpus_per_worker=1 (and vllm.data_parallel_size=1)")
        vllm = require_vllm()
        import torch
        from transformers import AutoTokenizer

        from alma_data.precision import bf16_native

        if not torch.cuda.is_available():
            raise RuntimeError("engine=vllm needs a CUDA GPU and none is visible here; "
                               "use engine=transformers on a CPU machine")
        self.model_path = str(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        kwargs = dict(
            model=self.model_path,
            tokenizer=self.model_path,
            # vLLM's own "auto" would run a checkpoint saved in float32 in float16 (its rule for
            # float32 configs); ours is bf16 where the GPU has it (alma_data/precision.py).
            dtype=("bfloat16" if bf16_native("cuda") else "float16") if dtype == "auto" else dtype,
            tensor_parallel_size=opts.tensor_parallel_size,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            enable_prefix_caching=opts.enable_prefix_caching,
            max_num_seqs=opts.max_num_seqs,
            enforce_eager=opts.enforce_eager,
            seed=0,
        )
        if opts.max_model_len:
            kwargs["max_model_len"] = opts.max_model_len
        self.llm = vllm.LLM(**kwargs)
        self.chunk = chunk_prompts
        self._vllm = vllm

    # -- sampling -----------------------------------------------------------------------
    def sampling_params(self, params: SamplingParams, index: int):
        greedy = params.temperature <= 0
        return self._vllm.SamplingParams(
            # vLLM refuses n > 1 with greedy sampling; generate() copies the one sample.
            n=1 if greedy else params.n,
            temperature=0.0 if greedy else params.temperature,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            seed=request_seed(params.seed, index),
            skip_special_tokens=True,
        )

    def generate(self, prompts: list[str], params: SamplingParams, progress=None) -> list[list[Sample]]:
        out: list[list[Sample]] = []
        for start in range(0, len(prompts), self.chunk):
            part = prompts[start:start + self.chunk]
            t0 = time.perf_counter()
            requests = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False).input_ids} for p in part]
            sps = [self.sampling_params(params, start + i) for i in range(len(part))]
            results = self.llm.generate(requests, sps, use_tqdm=False)
            tokens = 0
            for res in results:
                row = []
                for comp in res.outputs:
                    reason = "stop" if comp.finish_reason == "stop" else "length"
                    n = len(comp.token_ids)
                    # A sequence ended by EOS (stop_reason None) or by one of the generation
                    # config's other EOS ids (stop_reason that id) holds that token last; the
                    # transformers engine does not count it. A stop string's tokens are counted.
                    if reason == "stop" and not isinstance(comp.stop_reason, str) and n:
                        n -= 1
                    text, reason = cut_at_stop(comp.text, params.stop, reason)
                    row.append(Sample(text=text.strip(), n_tokens=n, finish_reason=reason))
                    tokens += n
                if len(row) < params.n:  # greedy: n copies of the one sample, as the transformers engine gives
                    tokens += row[0].n_tokens * (params.n - len(row))
                    row = [row[0]] + [replace(row[0]) for _ in range(params.n - 1)]
                out.append(row)
            self.stats.generated_tokens += tokens
            self.stats.generated_sequences += len(part) * params.n
            self.stats.generate_seconds += time.perf_counter() - t0
            if progress is not None:
                progress.update(len(part) * params.n)
        return out

    # -- score reading ------------------------------------------------------------------
    def score_candidates(self, prompts: list[str], candidates: list[str], suffix: str = "",
                         progress=None) -> np.ndarray:
        C = len(candidates)
        result = np.zeros((len(prompts), C), dtype=np.float64)
        # Only the prompt's own tokens are wanted: one generated token, its logprob unused;
        # no detokenisation of the logprobs' tokens (only their ids are read).
        sp = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        step = max(1, self.chunk // C)
        for start in range(0, len(prompts), step):
            part = prompts[start:start + step]
            t0 = time.perf_counter()
            requests, spans = [], []
            for p in part:
                head = self.tokenizer(p, add_special_tokens=False).input_ids
                for c in candidates:
                    ids = self.candidate_ids(p, c + suffix, head=head)
                    requests.append({"prompt_token_ids": head + ids})
                    spans.append((len(head), ids))
            results = self.llm.generate(requests, sp, use_tqdm=False)
            logp = np.zeros((len(part), C), dtype=np.float64)
            for k, (res, (offset, ids)) in enumerate(zip(results, spans)):
                plp = res.prompt_logprobs
                if plp is None:
                    raise RuntimeError("vLLM returned no prompt logprobs; this version of vLLM cannot read the "
                                       "judge's scores (it needs SamplingParams(prompt_logprobs=0) support)")
                # plp[i] maps the prompt's token i (given the tokens before it) to its Logprob.
                logp[k // C, k % C] = sum(plp[offset + j][t].logprob for j, t in enumerate(ids))
            probs = np.exp(logp - logp.max(axis=1, keepdims=True))
            result[start:start + len(part)] = probs / probs.sum(axis=1, keepdims=True)
            self.stats.scored += len(part)
            self.stats.score_seconds += time.perf_counter() - t0
            if progress is not None:
                progress.update(len(part))
        return result

    def close(self) -> None:
        """Free the GPU for the next checkpoint's engine."""
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
        except ImportError:  # moved or renamed in another vLLM release
            cleanup_dist_env_and_memory = None
        # The V1 engine core runs in its own process and holds the GPU memory: stop it
        # now rather than whenever the LLM object is collected, so that the next LLM's
        # start-up check finds the memory free.
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm
        gc.collect()
        if cleanup_dist_env_and_memory is not None:
            cleanup_dist_env_and_memory()
        import torch

        torch.cuda.empty_cache()
