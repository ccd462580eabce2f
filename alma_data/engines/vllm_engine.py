"""engine=vllm: offline vLLM on local GPUs (the ``gpu`` extra).

Sampling is one ``LLM.generate`` call per batch of prompts with ``SamplingParams(n=N)``:
vLLM prefills each prompt once and forks its KV cache into the N samples, and with
prefix caching (``vllm.enable_prefix_caching``) prompts that share a head (the judge's
instructions, the few-shot prompts' preamble) share its prefill too. Every request gets
its own seed, derived from the call's seed and the prompt's position, so a prompt's
samples do not depend on what else is in the batch.

Score reading: the judge's question followed by each candidate ("0".."10", then the
suffix ``]]``) is sent as token ids with ``prompt_logprobs``; a candidate's log-probability
is the sum over its own tokens, so multi-token candidates ("10" is "1","0" for some
tokenizers) are read exactly, as the transformers engine does.
"""

from __future__ import annotations

import gc
import hashlib
import time

import numpy as np

from alma_data.engines.base import Engine, Sample, SamplingParams


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
        vllm = require_vllm()
        import torch
        from transformers import AutoTokenizer

        if not torch.cuda.is_available():
            raise RuntimeError("engine=vllm needs a CUDA GPU and none is visible here; "
                               "use engine=transformers on a CPU machine")
        from alma_data.config import VLLMConfig

        opts = options or VLLMConfig()
        self.model_path = str(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        kwargs = dict(
            model=self.model_path,
            tokenizer=self.model_path,
            # "auto" would keep a checkpoint saved in float32 in float32; GPUs want bf16.
            dtype="bfloat16" if dtype == "auto" else dtype,
            tensor_parallel_size=opts.tensor_parallel_size,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            enable_prefix_caching=opts.enable_prefix_caching,
            max_num_seqs=opts.max_num_seqs,
            enforce_eager=opts.enforce_eager,
            seed=0,
        )
        if opts.max_model_len:
            kwargs["max_model_len"] = opts.max_model_len
        if opts.data_parallel_size > 1:
            kwargs["data_parallel_size"] = opts.data_parallel_size
        self.llm = vllm.LLM(**kwargs)
        self.chunk = chunk_prompts
        self._vllm = vllm

    # -- sampling -----------------------------------------------------------------------
    def sampling_params(self, params: SamplingParams, index: int):
        greedy = params.temperature <= 0
        return self._vllm.SamplingParams(
            n=params.n,
            temperature=0.0 if greedy else params.temperature,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            seed=request_seed(params.seed, index),
            skip_special_tokens=True,
        )

    def generate(self, prompts: list[str], params: SamplingParams, progress=None) -> list[list[Sample]]:
        TokensPrompt = self._vllm.TokensPrompt
        out: list[list[Sample]] = []
        for start in range(0, len(prompts), self.chunk):
            part = prompts[start:start + self.chunk]
            t0 = time.perf_counter()
            requests = [TokensPrompt(prompt_token_ids=self.tokenizer(p, add_special_tokens=False).input_ids)
                        for p in part]
            sps = [self.sampling_params(params, start + i) for i in range(len(part))]
            results = self.llm.generate(requests, sps, use_tqdm=False)
            tokens = 0
            for res in results:
                row = []
                for comp in res.outputs:
                    reason = "stop" if comp.finish_reason == "stop" else "length"
                    row.append(Sample(text=comp.text.strip(), n_tokens=len(comp.token_ids), finish_reason=reason))
                    tokens += len(comp.token_ids)
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
        TokensPrompt = self._vllm.TokensPrompt
        C = len(candidates)
        result = np.zeros((len(prompts), C), dtype=np.float64)
        # Only the prompt's own tokens are wanted: one generated token, its logprob unused.
        sp = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        step = max(1, self.chunk // C)
        for start in range(0, len(prompts), step):
            part = prompts[start:start + step]
            t0 = time.perf_counter()
            requests, spans = [], []
            for p in part:
                head = self.tokenizer(p, add_special_tokens=False).input_ids
                for c in candidates:
                    ids = self.candidate_ids(p, c + suffix, head=head)
                    requests.append(TokensPrompt(prompt_token_ids=head + ids))
                    spans.append((len(head), ids))
            results = self.llm.generate(requests, sp, use_tqdm=False)
            logp = np.zeros((len(part), C), dtype=np.float64)
            for k, (res, (offset, ids)) in enumerate(zip(results, spans)):
                plp = res.prompt_logprobs
                if plp is None:
                    raise RuntimeError("vLLM returned no prompt logprobs; this version of vLLM cannot read the "
                                       "judge's scores (it needs SamplingParams(prompt_logprobs=0) support)")
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
        del self.llm
        gc.collect()
        if cleanup_dist_env_and_memory is not None:
            cleanup_dist_env_and_memory()
        import torch

        torch.cuda.empty_cache()
