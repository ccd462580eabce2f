"""Judge self-distillation on the teacher's full distribution (``judge.distill_target=soft``).

The paper trains the judge further on its own *real-valued* judgments. Rounding them to
the answer format's integers (``rounded``) throws away what makes them real-valued: a
teacher at 7.4 and one at 6.6 both become "Rating: [[7]]". Here a row that carries the
teacher's 11-way distribution (the ``probs`` of judge_distill) is trained against it at
the rating position, with the student's distribution read exactly as the judge is read
when it scores (alma_data.scoring.real_valued_score): each candidate "0".."10"
followed by "]]", its tokens' log-probabilities summed, renormalised over the candidates.
So "10", which SmolLM2's tokenizer splits into "1","0", is a two-token candidate, told
apart from "1" by the closing "]]". The loss on such a row is KL(teacher || student).
Rows without a distribution (the seed annotations) keep the ordinary SFT loss on their
hard ``Rating: [[s]]`` target.

:class:`SoftTargetSFTTrainer` is TRL's SFTTrainer with ``compute_loss`` overridden: hard rows
go through TRL's own loss, soft rows through the one above, weighted by their share of
the batch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from training.common import TrainSpec, common_args, lean_memory, prepare, run_and_save

RATING_PREFIX = "Rating: [["
RATING_SUFFIX = "]]"
SOFT_COLUMNS = ("target_probs", "soft_prefix", "soft_candidates")


def candidate_tails(tokenizer, text: str, candidates: list[str], head: list[int]) -> list[list[int]]:
    """Tokens of each candidate as it follows ``text`` (tokenised in context, as Engine.candidate_ids)."""
    out = []
    for c in candidates:
        full = tokenizer(text + c, add_special_tokens=False).input_ids
        out.append(full[len(head):] if full[: len(head)] == head and len(full) > len(head)
                   else tokenizer(c, add_special_tokens=False).input_ids)
    return out


def soft_judge_dataset(sources: list[tuple[list, bool, bool]], scale: int):
    """The judge's examples for ``distill_target=soft``, from (parquet files, has a ``heldout``
    column, has a ``probs`` column) per table: the judge question -> ``Rating: [[s]]``, held-out
    rows left out, and ``target_probs`` the teacher's distribution where the table has one
    (judge_distill) or empty (the seed annotations, which keep their hard targets)."""
    import datasets

    from alma_data.prompting import judge_question, judge_target
    from training.common import parquet_dataset

    parts = []
    for files, has_heldout, has_probs in sources:
        ds = parquet_dataset(files, ["prompt", "response", "score"] + (["heldout"] if has_heldout else [])
                             + (["probs"] if has_probs else []))
        if has_heldout:
            ds = ds.filter(lambda r: not r["heldout"]).remove_columns("heldout")
        parts.append(ds.map(
            lambda r: {"prompt": judge_question(r["prompt"], r["response"], scale),
                       "completion": judge_target(int(math.floor(r["score"] + 0.5))),
                       "target_probs": [float(p) for p in r["probs"]] if has_probs and r["probs"] else []},
            remove_columns=ds.column_names,
            features=datasets.Features({"prompt": datasets.Value("string"), "completion": datasets.Value("string"),
                                        "target_probs": datasets.Sequence(datasets.Value("float32"))})))
    return datasets.concatenate_datasets(parts)


def add_soft_columns(dataset, tokenizer, scale: int):
    """For rows with a ``target_probs`` distribution: the tokens of the rendered question up to
    ``Rating: [[`` and each candidate's tokens after it; empty for hard rows."""
    candidates = [f"{s}{RATING_SUFFIX}" for s in range(scale + 1)]

    def add(row):
        probs = row["target_probs"] or []
        if not probs:
            return {"target_probs": [], "soft_prefix": [], "soft_candidates": []}
        if len(probs) != scale + 1:
            raise ValueError(f"a soft target has {len(probs)} probabilities; judge.scale={scale} needs {scale + 1}")
        text = row["prompt"] + RATING_PREFIX
        head = tokenizer(text, add_special_tokens=False).input_ids
        return {"target_probs": [float(p) for p in probs], "soft_prefix": head,
                "soft_candidates": candidate_tails(tokenizer, text, candidates, head)}

    import datasets

    # Typed up front: a first batch of hard rows alone would otherwise fix the columns as lists of nothing.
    features = dataset.features.copy()
    features.update({"target_probs": datasets.Sequence(datasets.Value("float32")),
                     "soft_prefix": datasets.Sequence(datasets.Value("int32")),
                     "soft_candidates": datasets.Sequence(datasets.Sequence(datasets.Value("int32")))})
    return dataset.map(add, features=features)


class SoftTargetCollator:
    """TRL's collator for the token columns; the soft-target columns ride along as lists."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples: list[dict]) -> dict:
        soft = [{k: ex.pop(k, None) for k in SOFT_COLUMNS} for ex in examples]
        batch = self.inner(examples)
        batch["soft"] = soft
        return batch


def candidate_log_probs(model, prefix: list[int], candidates: list[list[int]], device) -> torch.Tensor:
    """Log-probabilities (renormalised over the candidates) of each candidate after ``prefix``:
    one forward of the prefix, then every candidate's tokens but its last on copies of its KV cache."""
    C = len(candidates)
    ids = torch.tensor([prefix], device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    logp = torch.stack([first[c[0]] for c in candidates])
    L = max(len(c) for c in candidates)
    if L > 1:
        cache = out.past_key_values
        cache.batch_repeat_interleave(C)
        tail = torch.zeros((C, L - 1), dtype=torch.long, device=device)
        tmask = torch.zeros((C, L - 1), dtype=torch.long, device=device)
        for k, c in enumerate(candidates):
            if len(c) > 1:
                tail[k, : len(c) - 1] = torch.tensor(c[:-1], device=device)
                tmask[k, : len(c) - 1] = 1
        mask = torch.cat([torch.ones((C, len(prefix)), dtype=torch.long, device=device), tmask], dim=1)
        pos = (len(prefix) + torch.arange(L - 1, device=device)).unsqueeze(0).expand(C, -1)
        step = model(input_ids=tail, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        step_logp = torch.log_softmax(step.logits.float(), dim=-1)
        extra = []
        for k, c in enumerate(candidates):
            terms = [step_logp[k, j - 1, c[j]] for j in range(1, len(c))]
            extra.append(torch.stack(terms).sum() if terms else step_logp.new_zeros(()))
        logp = logp + torch.stack(extra)
    return torch.log_softmax(logp, dim=-1)


def soft_kl(model, row: dict, device) -> torch.Tensor:
    target = torch.tensor(row["target_probs"], dtype=torch.float32, device=device)
    target = target / target.sum()
    student = candidate_log_probs(model, row["soft_prefix"], row["soft_candidates"], device)
    return (torch.xlogy(target, target) - target * student).sum()


def _trainer_class():
    from trl import SFTTrainer

    class SoftTargetSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss, on rows with a teacher distribution, is KL(teacher || student)
        over the rating candidates; the other rows keep TRL's SFT loss."""

        loss_is_scaled_for_ga = False  # a mean over the batch: the Trainer divides by accumulation steps

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            for k in SOFT_COLUMNS:
                if k not in self._signature_columns:
                    self._signature_columns.append(k)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            soft = inputs.pop("soft", None) or []
            rows = len(inputs["input_ids"])
            is_soft = [bool(s and s.get("target_probs")) for s in soft] + [False] * (rows - len(soft))
            hard = [i for i in range(rows) if not is_soft[i]]
            loss = inputs["input_ids"].new_zeros((), dtype=torch.float32)
            if hard:
                sub = {k: (v[hard] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == rows else v)
                       for k, v in inputs.items()}
                loss = loss + super().compute_loss(model, sub, num_items_in_batch=None) * (len(hard) / rows)
            soft_rows = [soft[i] for i in range(rows) if is_soft[i]]
            if soft_rows:
                device = inputs["input_ids"].device
                kl = torch.stack([soft_kl(model, r, device) for r in soft_rows])
                loss = loss + kl.sum() / rows
                mode = "train" if self.model.training else "eval"
                self._metrics[mode]["soft_kl"].append(float(kl.mean().detach()))
            if return_outputs:
                return loss, None
            return loss

    return SoftTargetSFTTrainer


def train_soft_sft(model_path: str, dataset, out_dir: Path, spec: TrainSpec, *,
                   log: Callable[[str], None] = print, render_prompt: Callable | None = None) -> dict:
    """Like training.sft.train_sft, on prompt/completion rows that may carry ``target_probs``
    (the teacher's distribution over 0..scale, which its length gives; empty for a hard row)."""
    from trl import SFTConfig

    model, tokenizer, dataset = prepare(model_path, dataset, render_prompt, ("completion",),
                                        f"no training examples for {out_dir.name}; check the split it is trained on")
    scale = next((len(p) - 1 for p in dataset["target_probs"] if p), 10)
    dataset = add_soft_columns(dataset, tokenizer, scale)
    n_soft = sum(1 for p in dataset["target_probs"] if p)
    log(f"  judge distillation on the teacher's distribution: {n_soft} soft rows, {len(dataset) - n_soft} hard rows")
    # Without gradient checkpointing, which turns the KV cache off: the soft loss reads the
    # candidates' later tokens on copies of the question's cache (same gradients, more memory).
    args = SFTConfig(**common_args(spec, out_dir, len(dataset)), completion_only_loss=True, packing=False,
                     dataset_num_proc=None, eos_token=tokenizer.eos_token, gradient_checkpointing=False)
    trainer = _trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    lean_memory(trainer)  # the hard rows' loss is TRL's SFT loss
    trainer.data_collator = SoftTargetCollator(trainer.data_collator)
    return run_and_save(trainer, tokenizer, out_dir, spec, model_path, len(dataset), log, "sft-soft")
