"""The CPU default: a transformers model, batched sampling and KV-cached score reading."""

from __future__ import annotations

import time

import numpy as np
import torch

from alma_data.engines.base import Engine, Sample, SamplingParams


def pick_dtype(name: str) -> torch.dtype:
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if torch.cuda.is_available():
        return torch.bfloat16
    # bf16 only pays on CPUs with native bf16 arithmetic; elsewhere it is emulated and slow.
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        pass
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, model_path: str, dtype: str = "auto", batch_rows: int = 32,
                 score_batch: int = 8, device: str | None = None):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = str(model_path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = pick_dtype(dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype).to(self.device)
        self.model.eval()
        self.batch_rows = batch_rows
        self.score_batch = score_batch

    # -- sampling -----------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: list[str], params: SamplingParams, progress=None) -> list[list[Sample]]:
        tok = self.tokenizer
        tok.padding_side = "left"  # generation continues at the right edge
        # Every (prompt, sample) is one row; rows of similar length share a batch to cut padding.
        lengths = [len(tok(p, add_special_tokens=False).input_ids) for p in prompts]
        rows = [(i, j) for i in sorted(range(len(prompts)), key=lambda i: (lengths[i], i)) for j in range(params.n)]
        out: list[list[Sample | None]] = [[None] * params.n for _ in prompts]
        torch.manual_seed(params.seed)
        eos_ids = self._eos_ids()
        do_sample = params.temperature > 0
        for start in range(0, len(rows), self.batch_rows):
            batch = rows[start:start + self.batch_rows]
            t0 = time.perf_counter()
            enc = tok([prompts[i] for i, _ in batch], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(self.device)
            gen = self.model.generate(
                **enc,
                do_sample=do_sample,
                temperature=params.temperature if do_sample else None,
                top_p=params.top_p if do_sample else None,
                top_k=None,
                max_new_tokens=params.max_new_tokens,
                stop_strings=params.stop or None,
                tokenizer=tok if params.stop else None,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos_ids,
            )
            new = gen[:, enc.input_ids.shape[1]:]
            n_new = 0
            for (i, j), ids in zip(batch, new.tolist()):
                sample = self._finish(ids, eos_ids, params)
                out[i][j] = sample
                n_new += sample.n_tokens
            self.stats.generated_tokens += n_new
            self.stats.generated_sequences += len(batch)
            self.stats.generate_seconds += time.perf_counter() - t0
            if progress is not None:
                progress.update(len(batch))
        return out  # type: ignore[return-value]

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def _finish(self, ids: list[int], eos_ids: list[int], params: SamplingParams) -> Sample:
        reason = "length"
        for k, t in enumerate(ids):
            if t in eos_ids:
                ids, reason = ids[:k], "stop"
                break
        ids = [t for t in ids if t != self.tokenizer.pad_token_id or t in eos_ids]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for s in params.stop:
            cut = text.find(s)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        return Sample(text=text.strip(), n_tokens=len(ids), finish_reason=reason)

    # -- score reading ------------------------------------------------------------------
    def candidate_ids(self, prompt: str, candidate: str) -> list[int]:
        """Tokens of ``candidate`` as they follow ``prompt`` (tokenised in context)."""
        tok = self.tokenizer
        head = tok(prompt, add_special_tokens=False).input_ids
        full = tok(prompt + candidate, add_special_tokens=False).input_ids
        if full[: len(head)] == head and len(full) > len(head):
            return full[len(head):]
        return tok(candidate, add_special_tokens=False).input_ids

    @torch.inference_mode()
    def score_candidates(self, prompts: list[str], candidates: list[str], suffix: str = "",
                         progress=None) -> np.ndarray:
        """One prefill per prompt; the candidates then run on copies of its KV cache."""
        tok = self.tokenizer
        tok.padding_side = "left"
        C = len(candidates)
        result = np.zeros((len(prompts), C), dtype=np.float64)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(prompts), self.score_batch):
            idx = order[start:start + self.score_batch]
            t0 = time.perf_counter()
            batch = [prompts[i] for i in idx]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            mask = enc.attention_mask
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model(input_ids=enc.input_ids, attention_mask=mask, position_ids=pos, use_cache=True)
            first_logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V)
            cand = [[self.candidate_ids(p, c + suffix) for c in candidates] for p in batch]
            L = max(len(ids) for row in cand for ids in row)
            B = len(batch)
            logp = torch.zeros(B, C, dtype=torch.float64)
            for b in range(B):
                for c in range(C):
                    logp[b, c] = first_logp[b, cand[b][c][0]].double()
            if L > 1:
                # Feed every candidate's tokens but the last on a copy of its prompt's cache.
                cache = out.past_key_values
                cache.batch_repeat_interleave(C)
                ids = torch.full((B * C, L - 1), tok.pad_token_id, dtype=torch.long)
                cmask = torch.zeros((B * C, L - 1), dtype=mask.dtype)
                for b in range(B):
                    for c in range(C):
                        t = cand[b][c][:-1]
                        if t:
                            ids[b * C + c, : len(t)] = torch.tensor(t)
                            cmask[b * C + c, : len(t)] = 1
                ids, cmask = ids.to(self.device), cmask.to(self.device)
                full_mask = torch.cat([mask.repeat_interleave(C, dim=0), cmask], dim=1)
                start_pos = mask.sum(-1).repeat_interleave(C).unsqueeze(1)
                cpos = start_pos + torch.arange(L - 1, device=self.device).unsqueeze(0)
                step = self.model(input_ids=ids, attention_mask=full_mask, position_ids=cpos,
                                  past_key_values=cache, use_cache=True)
                step_logp = torch.log_softmax(step.logits.float(), dim=-1)  # (B*C, L-1, V)
                for b in range(B):
                    for c in range(C):
                        t = cand[b][c]
                        for k in range(1, len(t)):
                            logp[b, c] += step_logp[b * C + c, k - 1, t[k]].double()
            probs = torch.softmax(logp, dim=-1).numpy()
            for row, i in enumerate(idx):
                result[i] = probs[row]
            self.stats.scored += B
            self.stats.score_seconds += time.perf_counter() - t0
            if progress is not None:
                progress.update(B)
        return result

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
