"""The CPU default: a transformers model, batched sampling and KV-cached score reading."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from alma_data.engines.base import Engine, Sample, SamplingParams, cut_at_stop
from alma_data.precision import pick_dtype


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else nucleus (top-p) sampling.

    The nucleus is found among the top-k tokens, k growing until it covers ``top_p``
    of the mass in every row, so the full vocabulary is sorted only when it must be.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_p >= 1.0:
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).squeeze(1)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    vocab, k = logits.shape[-1], min(64, logits.shape[-1])
    while True:
        vals, idx = logits.topk(k, dim=-1)
        p = torch.exp(vals - lse)
        before = p.cumsum(dim=-1) - p  # mass of the tokens ranked above each one
        if k == vocab or bool((before[:, -1] + p[:, -1] >= top_p).all()):
            break
        k = min(vocab, k * 4)
    p = p * (before < top_p)  # the smallest head of the ranking that reaches top_p
    choice = torch.multinomial(p, 1, generator=gen)
    return idx.gather(-1, choice).squeeze(1)


def common_prefix(seqs: list[list[int]]) -> list[int]:
    """The longest head all token lists share, leaving every list at least one token of its own."""
    if not seqs:
        return []
    first, n = seqs[0], min(len(s) for s in seqs) - 1
    k = 0
    while k < n and all(s[k] == first[k] for s in seqs):
        k += 1
    return first[:k]


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, model_path: str, dtype: str = "auto", batch_rows: int = 0,
                 score_batch: int = 8, device: str | None = None, memory_budget_gb: float = 2.0):
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
        """Sequences decoded together; 0 picks it from ``memory_budget_gb``."""
        self.memory_budget = memory_budget_gb * 2**30
        self.score_batch = score_batch

    # -- sampling -----------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: list[str], params: SamplingParams, progress=None) -> list[list[Sample]]:
        """Prompts of similar length share a batch; each prompt is prefilled once and its
        KV cache copied to its ``n`` samples; finished rows leave the batch."""
        tok = self.tokenizer
        encoded = [tok(p, add_special_tokens=False).input_ids for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        # Work units: (prompt, first sample, samples); a prompt with more samples than a
        # batch holds is split over several units.
        rows_cap = self.rows_per_batch(max((len(e) for e in encoded), default=1) + params.max_new_tokens)
        units = [(i, j, min(params.n - j, rows_cap)) for i in order for j in range(0, params.n, rows_cap)]
        out: list[list[Sample | None]] = [[None] * params.n for _ in prompts]
        gen = torch.Generator(device=self.device).manual_seed(params.seed)
        eos_ids = self._eos_ids()
        batch: list[tuple[int, int, int]] = []
        for unit in units + [None]:
            if unit is not None and sum(u[2] for u in batch) + unit[2] <= rows_cap:
                batch.append(unit)
                continue
            if batch:
                t0 = time.perf_counter()
                texts = self._decode_batch([encoded[i] for i, _, _ in batch], [c for _, _, c in batch],
                                           params, gen, eos_ids)
                k = n_new = 0
                for i, j, c in batch:
                    for s in range(c):
                        out[i][j + s] = texts[k]
                        n_new += texts[k].n_tokens
                        k += 1
                self.stats.generated_tokens += n_new
                self.stats.generated_sequences += k
                self.stats.generate_seconds += time.perf_counter() - t0
                if progress is not None:
                    progress.update(k)
            batch = [unit] if unit is not None else []
        return out  # type: ignore[return-value]

    def rows_per_batch(self, max_tokens: int) -> int:
        """Sequences decoded together: ``batch_rows``, or (0) as many as the KV-cache budget holds."""
        if self.batch_rows > 0:
            return self.batch_rows
        cfg = self.model.config.get_text_config()
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        per_row = 2 * cfg.num_hidden_layers * heads * head_dim * max_tokens * self.model.dtype.itemsize
        per_row += 4 * cfg.vocab_size * 3  # logits and the sampling buffers of one step
        fit = int(self.memory_budget // per_row)
        # Past ~128 rows two CPU cores are compute-bound and a step only gets slower.
        ceiling = 1024 if self.device.startswith("cuda") else 128
        return max(1, min(fit, ceiling))

    def _decode_batch(self, heads: list[list[int]], copies: list[int], params: SamplingParams,
                      gen: torch.Generator, eos_ids: list[int]) -> list[Sample]:
        tok, dev = self.tokenizer, self.device
        width = max(len(h) for h in heads)
        pad = tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(h)) + h for h in heads], device=dev)
        mask = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads], device=dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        # One prefill per prompt, its cache then copied to every sample of it.
        reps = torch.tensor(copies, device=dev)
        cache = out.past_key_values
        if any(c != 1 for c in copies):
            expand = torch.repeat_interleave(torch.arange(len(heads), device=dev), reps)
            cache.batch_select_indices(expand)
            mask = mask[expand]
            logits = out.logits[expand, -1, :]
        else:
            logits = out.logits[:, -1, :]
        rows = int(reps.sum())
        last_pos = mask.sum(-1) - 1
        produced: list[list[int]] = [[] for _ in range(rows)]
        reasons = ["length"] * rows
        active = torch.arange(rows, device=dev)
        stops = params.stop
        tail = max((len(s) for s in stops), default=0) + 8
        for step in range(params.max_new_tokens):
            nxt = sample_next(logits.float(), params.temperature, params.top_p, gen)
            done = []
            for k, (row, t) in enumerate(zip(active.tolist(), nxt.tolist())):
                if t in eos_ids:
                    reasons[row] = "stop"
                    done.append(k)
                    continue
                produced[row].append(t)
                if stops:
                    text = tok.decode(produced[row][-tail:], skip_special_tokens=True)
                    if any(s in text for s in stops):
                        reasons[row] = "stop"
                        done.append(k)
            if step == params.max_new_tokens - 1:
                break
            if done:
                gone = set(done)
                keep = torch.tensor([k for k in range(len(active)) if k not in gone], device=dev, dtype=torch.long)
                if keep.numel() == 0:
                    break
                active, nxt, mask, last_pos = active[keep], nxt[keep], mask[keep], last_pos[keep]
                cache.batch_select_indices(keep)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            last_pos = last_pos + 1
            step_out = self.model(input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=last_pos.unsqueeze(1),
                                  past_key_values=cache, use_cache=True)
            cache, logits = step_out.past_key_values, step_out.logits[:, -1, :]
        samples = []
        for row in range(rows):
            text, reason = cut_at_stop(tok.decode(produced[row], skip_special_tokens=True), stops, reasons[row])
            samples.append(Sample(text=text.strip(), n_tokens=len(produced[row]), finish_reason=reason))
        return samples

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    # -- score reading ------------------------------------------------------------------
    @torch.inference_mode()
    def score_candidates(self, prompts: list[str], candidates: list[str], suffix: str = "",
                         progress=None) -> np.ndarray:
        """One prefill per prompt; the candidates then run on copies of its KV cache.

        The judge's questions all open with the same instructions: that common head is
        prefilled once per call, and every batch continues from a copy of its cache.
        """
        tok = self.tokenizer
        C = len(candidates)
        result = np.zeros((len(prompts), C), dtype=np.float64)
        encoded = [tok(p, add_special_tokens=False).input_ids for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        head = common_prefix(encoded) if len(prompts) > 1 else []
        head_cache = None
        if len(head) >= 8:
            head_ids = torch.tensor([head], device=self.device)
            head_cache = self.model(input_ids=head_ids, use_cache=True, logits_to_keep=1).past_key_values
        else:
            head = []
        for start in range(0, len(prompts), self.score_batch):
            idx = order[start:start + self.score_batch]
            t0 = time.perf_counter()
            batch = [prompts[i] for i in idx]
            B = len(batch)
            rest = [encoded[i][len(head):] for i in idx]
            width = max(len(r) for r in rest)
            ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rest], device=self.device)
            rest_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], device=self.device)
            # Padding sits between the shared head and each question's own part.
            mask = torch.cat([rest_mask.new_ones((B, len(head))), rest_mask], dim=1)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, len(head):]
            cache = None
            if head_cache is not None:
                cache = copy.deepcopy(head_cache)
                cache.batch_repeat_interleave(B)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
            first_logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V)
            cand = [[self.candidate_ids(prompts[i], c + suffix, head=encoded[i]) for c in candidates] for i in idx]
            L = max(len(ids) for row in cand for ids in row)
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
