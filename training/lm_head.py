"""The LM head's per-token log-probabilities on the CPU in chunks of rows, never the batch's logits.

TRL's trainers call ``model(..., labels=labels, fused_lm_head=True)`` on the forward that
``trl.trainer.utils.add_fused_lm_head`` puts on the model, and take per-token log-probabilities
(and entropy, top-1) instead of logits. On a GPU with Triton that forward scores only the
positions that have a label, in small tiles. Without Triton (the CPU) TRL 1.16 scores *every*
position, the prompt's and the padding's too, in tiles of 4,096 positions x 32,768 vocabulary
entries folded by whole-tile torch operations: for the default recipe's SFT (8 x 256 tokens,
SmolLM2's 49,152-token vocabulary, float32) a tile is 256 MiB and its backward holds about
eight of them at once, 2.2 GiB over the rest of the training (benchmarks/train_memory.py).

:func:`lean_lm_head` puts a forward in front of TRL's that, on the CPU, does the same job
with :class:`HeadLogProbs`: only the positions whose label is not -100, a chunk of
:func:`rows_per_chunk` rows at a time over the whole vocabulary (32 MiB of float32 logits),
the backward recomputing each chunk's logits and turning them into their gradient in place.
It computes what TRL's computes (the log-probability of each label under the model's
softmax, the distribution's entropy and whether the label is its first argmax), so the loss
and the gradients are the full-logits ones up to the order floats are added in
(tests/test_lm_head.py); everywhere else (a GPU, a model whose logits are scaled or
soft-capped, shifted labels) TRL's forward runs as before.
"""

from __future__ import annotations

import functools
import types

import torch

ENABLED = True
"""False: leave TRL's forward alone (benchmarks/train_memory.py measures both)."""

CHUNK_ELEMENTS = 1 << 23
"""Logits of one chunk of rows: 8 Mi values, 32 MiB in float32."""

OUTPUTS = ("log_probs", "entropy", "is_top1")
"""The per-token fields this forward fills (those of TRL's SFT); a caller that needs others
(DPO's, GRPO's) keeps TRL's forward."""

# Things that change the logits before the softmax, which HeadLogProbs does not apply.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


def rows_per_chunk(vocab: int, elements: int | None = None) -> int:
    return max(1, (CHUNK_ELEMENTS if elements is None else elements) // max(1, vocab))


class HeadLogProbs(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T)[i, targets[i]]`` for each row ``i``, a chunk of ``rows``
    rows at a time; also the entropy of each row's distribution and whether its target is its
    first argmax, both without gradient. The matrix products run in ``compute_dtype`` (bf16
    under autocast, as the model's own LM head would), the softmax in float32, and the weight's
    gradient adds up the chunks in float32. Saved for the backward: the inputs and one
    log-sum-exp a row."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, rows):
        n = hidden.shape[0]
        dev = hidden.device
        log_probs = torch.empty(n, dtype=torch.float32, device=dev)
        log_z = torch.empty(n, dtype=torch.float32, device=dev)
        entropy = torch.empty(n, dtype=torch.float32, device=dev)
        top1 = torch.empty(n, dtype=torch.bool, device=dev)
        with torch.autocast(dev.type, enabled=False):
            w = weight.to(compute_dtype)
            for s in range(0, n, rows):
                e = min(s + rows, n)
                t = targets[s:e]
                z = (hidden[s:e].to(compute_dtype) @ w.t()).float()  # [r, V]
                top1[s:e] = z.argmax(-1) == t  # argmax: the first maximum
                m = z.amax(-1, keepdim=True)
                target_z = z.gather(-1, t.unsqueeze(-1)).squeeze(-1)
                z.sub_(m)
                p = torch.exp(z)  # unnormalised
                total = p.sum(-1)
                # entropy = log(total) - sum(p * z) / total, the sum as a batched dot product (no [r, V] product)
                dot = torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1)
                del p, z
                log_total = torch.log(total)
                log_z[s:e] = m.squeeze(-1) + log_total
                entropy[s:e] = log_total - dot / total
                log_probs[s:e] = target_z - log_z[s:e]
        ctx.save_for_backward(hidden, weight, targets, log_z)
        ctx.compute_dtype, ctx.rows = compute_dtype, rows
        ctx.mark_non_differentiable(entropy, top1)
        return log_probs, entropy, top1

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy=None, grad_top1=None):
        hidden, weight, targets, log_z = ctx.saved_tensors
        cd, rows = ctx.compute_dtype, ctx.rows
        need_h, need_w = ctx.needs_input_grad[:2]
        n = hidden.shape[0]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        if grad_log_probs is None or n == 0:
            return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None
        g = grad_log_probs.float()
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cd)
            for s in range(0, n, rows):
                e = min(s + rows, n)
                h = hidden[s:e].to(cd)
                # d log p_t / d z_j = [j = t] - p_j, times the incoming gradient; in place on the chunk's logits
                z = (h @ w.t()).float()
                z.sub_(log_z[s:e].unsqueeze(-1)).exp_().neg_()
                z[torch.arange(e - s, device=z.device), targets[s:e]] += 1.0
                z.mul_(g[s:e].unsqueeze(-1))
                if need_h:
                    grad_h[s:e] = z.to(cd) @ w
                if need_w:
                    grad_w.addmm_(z.t(), h.float())
                del z
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None


def head_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probability of each target, entropy, target is the top-1) for rows of ``hidden``
    ([N, H]) through the LM head ``weight`` ([V, H])."""
    dev = hidden.device.type
    cd = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
    return HeadLogProbs.apply(hidden, weight, targets, cd, rows or rows_per_chunk(weight.shape[0]))


def applies(model) -> bool:
    """Whether :class:`HeadLogProbs` computes what the model's own head does: a plain linear
    head without bias, and logits neither scaled nor soft-capped, nor an MoE router's loss."""
    text = model.config.get_text_config()
    if any(getattr(text, k, None) is not None for k in _LOGIT_TRANSFORMS):
        return False
    if getattr(text, "output_router_logits", False):
        return False
    head = model.get_output_embeddings()
    return isinstance(head, torch.nn.Linear) and head.bias is None


def lean_lm_head(model, outputs: tuple[str, ...] = OUTPUTS) -> bool:
    """Put the CPU forward of this module in front of the fused-LM-head forward TRL's trainer
    put on ``model`` (call it after the trainer is made); True where it did. ``outputs``: the
    per-token fields the trainer reads (TRL's forward keeps the calls that need others)."""
    if not ENABLED or not set(outputs) <= set(OUTPUTS) or not applies(model):
        return False
    fused = model.forward  # TRL's, bound to the model

    @functools.wraps(fused)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        head = self.get_output_embeddings()
        if not (fused_lm_head and labels is not None and shift_labels is None and head.weight.device.type == "cpu"):
            return fused(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                         num_items_in_batch=num_items_in_batch, **kwargs)
        return _cpu_forward(self, head, args, kwargs, labels, num_items_in_batch)

    model.forward = types.MethodType(forward, model)
    model._alma_lean_lm_head = True
    return True


def _cpu_forward(model, head, args, kwargs, labels, num_items_in_batch):
    from trl.trainer.utils import FusedCausalLMOutput

    kwargs["use_cache"] = False
    hidden = model.base_model(*args, **kwargs).last_hidden_state[:, :-1]
    labels = labels[:, 1:].to(hidden.device)
    mask = labels != -100
    log_probs, entropy, top1 = head_log_probs(hidden[mask], head.weight, labels[mask])
    # masked_scatter keeps a batch without a label connected to the model (a zero loss with a gradient)
    log_probs, entropy, top1 = (x.new_zeros(mask.shape).masked_scatter(mask, x) for x in (log_probs, entropy, top1))
    loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, is_top1=top1, label_mask=mask)
