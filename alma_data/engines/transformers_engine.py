"""The CPU default: a transformers model, batched sampling and KV-cached score reading."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

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


def read_logprobs(logits: torch.Tensor, tokens: list[list[int]]) -> torch.Tensor:
    """``log_softmax(logits)[b, tokens[b][c]]`` as float64 (B, C), without the whole vocabulary's log-probabilities."""
    lse = torch.logsumexp(logits.float(), dim=-1, keepdim=True)
    picked = logits.gather(-1, torch.tensor(tokens, device=logits.device)).float()
    return (picked - lse).double().cpu()


@dataclass
class TokenTree:
    """The distinct heads of a question's candidates, but their last token: one node each,
    in first-seen order, so candidates that share their first tokens share those nodes."""
    tokens: list[int] = field(default_factory=list)       # the node's own (last) token
    depths: list[int] = field(default_factory=list)       # 0 for a candidate's first token
    ancestors: list[list[int]] = field(default_factory=list)  # the nodes of its branch before it
    index: dict[tuple[int, ...], int] = field(default_factory=dict)  # head -> node


def token_tree(cands: list[list[int]]) -> TokenTree:
    tree = TokenTree()
    for seq in cands:
        for k in range(1, len(seq)):
            key = tuple(seq[:k])
            if key in tree.index:
                continue
            parent = tree.index.get(key[:-1])
            tree.index[key] = len(tree.tokens)
            tree.tokens.append(seq[k - 1])
            tree.depths.append(k - 1)
            tree.ancestors.append([] if parent is None else tree.ancestors[parent] + [parent])
    return tree


def broadcast_cache(head, rows: int):
    """The head's cache for ``rows`` rows, its tensors broadcast (``expand``, no copy): the next
    forward's concatenation writes each row's own keys and values. A cache of other layers
    than transformers' dynamic ones is deep-copied and repeated instead."""
    if not tree_ready(head):
        cache = copy.deepcopy(head)
        cache.batch_repeat_interleave(rows)
        return cache
    cache = copy.copy(head)
    cache.layers = []
    for layer in head.layers:
        new = copy.copy(layer)
        if layer.keys is not None and layer.keys.numel():
            new.keys = layer.keys.expand(rows, *layer.keys.shape[1:])
            new.values = layer.values.expand(rows, *layer.values.shape[1:])
        cache.layers.append(new)
    return cache


def tree_ready(cache) -> bool:
    """Whether a token tree can extend ``cache``: transformers' dynamic attention layers, full or
    sliding-window (keys and values appended; no recurrent state)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


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
        """One prefill per prompt, then every candidate's tokens in one forward, as a tree.

        The judge's questions all open with the same instructions (and, for a few-shot judge,
        the same examples): that common head is prefilled once per call, and each batch of
        ``score_batch`` questions continues from it, the head's keys and values broadcast to
        the batch's rows (no copy until the questions' own tokens are appended). A candidate's
        first token is read from the question's last logits; its later tokens from one more
        forward over a token tree a question: the distinct heads of the candidates' tokens
        ("1" of "1]]" and "10]]" once), each seeing its question's tokens (not the padding)
        and the earlier tokens of its own branch, through a 4D attention mask, at the
        positions that continue its question. So a batch's cache holds one row a question,
        where copying it to every candidate held eleven; the result is the same
        (tests/test_transformers_engine.py against that former way).
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
            B = len(idx)
            rest = [encoded[i][len(head):] for i in idx]
            width = max(len(r) for r in rest)
            ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rest], device=self.device)
            rest_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], device=self.device)
            # Padding sits between the shared head and each question's own part.
            mask = torch.cat([rest_mask.new_ones((B, len(head))), rest_mask], dim=1)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, len(head):]
            cache = broadcast_cache(head_cache, B) if head_cache is not None else None
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
            cand = [[self.candidate_ids(prompts[i], c + suffix, head=encoded[i]) for c in candidates] for i in idx]
            logp = read_logprobs(out.logits[:, -1, :], [[c[0] for c in row] for row in cand])
            cache = out.past_key_values
            del out
            if any(len(c) > 1 for row in cand for c in row):
                if tree_ready(cache):
                    logp += self._tree_logprobs(cache, mask, cand)
                else:
                    logp += self._copies_logprobs(cache, mask, cand)
            del cache
            probs = torch.softmax(logp, dim=-1).numpy()
            for row, i in enumerate(idx):
                result[i] = probs[row]
            self.stats.scored += B
            self.stats.score_seconds += time.perf_counter() - t0
            if progress is not None:
                progress.update(B)
        return result

    def _tree_logprobs(self, cache, mask: torch.Tensor, cand: list[list[list[int]]]) -> torch.Tensor:
        """Log-probabilities of the candidates' tokens after their first, in one forward over
        each question's token tree on the batch's cache (``mask``: the batch's 2D mask so far)."""
        B, P, dev = mask.shape[0], mask.shape[1], self.device
        trees = [token_tree(row) for row in cand]
        T = max(len(t.tokens) for t in trees)
        ids = torch.full((B, T), self.tokenizer.pad_token_id, dtype=torch.long)
        depth = torch.zeros((B, T), dtype=torch.long)
        sees = torch.zeros((B, T, T), dtype=torch.bool)  # a tree token: itself and its branch's earlier ones
        for b, t in enumerate(trees):
            n = len(t.tokens)
            ids[b, :n] = torch.tensor(t.tokens, dtype=torch.long)
            depth[b, :n] = torch.tensor(t.depths, dtype=torch.long)
            sees[b, torch.arange(T), torch.arange(T)] = True  # a padding node sees itself (and the prompt)
            for node, anc in enumerate(t.ancestors):
                sees[b, node, anc] = True
        ids, depth, sees = ids.to(dev), depth.to(dev), sees.to(dev)
        prompt = mask.bool()[:, None, :].expand(B, T, P)
        allowed = torch.cat([prompt, sees], dim=-1)  # (B, T, P + T)
        pos = mask.sum(-1, keepdim=True) + depth  # each branch continues its question's positions
        attn = self._tree_mask(cache, allowed, depth, P)
        logits = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                            use_cache=True).logits
        rows, nodes, toks, where = [], [], [], []
        for b, (t, row) in enumerate(zip(trees, cand)):
            for c, seq in enumerate(row):
                for k in range(1, len(seq)):
                    rows.append(b)
                    nodes.append(t.index[tuple(seq[:k])])
                    toks.append(seq[k])
                    where.append(b * len(row) + c)
        C = len(cand[0])
        rows_t, nodes_t = torch.tensor(rows, device=dev), torch.tensor(nodes, device=dev)
        picked = logits[rows_t, nodes_t, torch.tensor(toks, device=dev)].float()
        lse = torch.logsumexp(logits.float(), dim=-1)[rows_t, nodes_t]  # (B, T) reduced, then picked
        total = torch.zeros(B * C, dtype=torch.float64)
        total.index_add_(0, torch.tensor(where), (picked - lse).double().cpu())
        return total.view(B, C)

    def _tree_mask(self, cache, allowed: torch.Tensor, depth: torch.Tensor, P: int):
        """The additive 4D mask of the tree step, one for full attention and, where the model has
        sliding-window layers, one for those: they hold only the last ``window - 1`` positions,
        and a token at padded position ``P + depth`` sees the positions after ``P + depth - window``
        (the rule transformers' own sliding mask applies, padding counted as it counts it)."""
        dtype = self.model.dtype
        T = allowed.shape[1]

        def additive(ok: torch.Tensor) -> torch.Tensor:
            return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill(~ok, torch.finfo(dtype).min)[:, None]

        sliding = [layer for layer in cache.layers if getattr(layer, "is_sliding", False)]
        if not sliding:
            return additive(allowed)
        window = sliding[0].sliding_window
        kept = min(P, window - 1)  # what the sliding layers hold of the prompt
        j = torch.arange(P - kept, P, device=allowed.device)
        in_window = j[None, None, :] > (P + depth)[:, :, None] - window
        part = allowed[:, :, P - kept:P] & in_window
        sliding_mask = additive(torch.cat([part, allowed[:, :, P:]], dim=-1))
        if len(sliding) == len(cache.layers):
            return sliding_mask
        return {"full_attention": additive(allowed), "sliding_attention": sliding_mask}

    def _copies_logprobs(self, cache, mask: torch.Tensor, cand: list[list[list[int]]]) -> torch.Tensor:
        """The candidates' later tokens fed on copies of their question's cache, one a candidate:
        for caches a token tree cannot extend (recurrent or linear-attention layers)."""
        tok, dev = self.tokenizer, self.device
        B, C = len(cand), len(cand[0])
        L = max(len(ids) for row in cand for ids in row)
        cache.batch_repeat_interleave(C)
        ids = torch.full((B * C, L - 1), tok.pad_token_id, dtype=torch.long)
        cmask = torch.zeros((B * C, L - 1), dtype=mask.dtype)
        for b in range(B):
            for c in range(C):
                t = cand[b][c][:-1]
                if t:
                    ids[b * C + c, : len(t)] = torch.tensor(t)
                    cmask[b * C + c, : len(t)] = 1
        ids, cmask = ids.to(dev), cmask.to(dev)
        full_mask = torch.cat([mask.repeat_interleave(C, dim=0), cmask], dim=1)
        start_pos = mask.sum(-1).repeat_interleave(C).unsqueeze(1)
        cpos = start_pos + torch.arange(L - 1, device=dev).unsqueeze(0)
        logits = self.model(input_ids=ids, attention_mask=full_mask, position_ids=cpos,
                            past_key_values=cache, use_cache=True).logits
        logp = torch.zeros(B, C, dtype=torch.float64)
        for b in range(B):
            for c in range(C):
                t = cand[b][c]
                if len(t) > 1:
                    row = logits[b * C + c, : len(t) - 1].float()
                    picked = row[torch.arange(len(t) - 1), torch.tensor(t[1:], device=dev)]
                    logp[b, c] = (picked - torch.logsumexp(row, dim=-1)).sum().double()
        return logp

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
