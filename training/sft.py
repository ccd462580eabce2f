"""Supervised fine-tuning with TRL over prompt/completion rows read from the store.

Used for the policy (seed pairs, best-of-n splits) and for the judge (judge questions
answered ``Rating: [[s]]``): both are SFT on prompt -> completion with the loss on the
completion only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from training.common import TrainSpec, common_args, lean_memory, prepare, run_and_save


def train_sft(model_path: str, dataset, out_dir: Path, spec: TrainSpec, *, log: Callable[[str], None] = print,
              render_prompt: Callable | None = None) -> dict:
    """Fine-tune ``model_path`` on a dataset with ``prompt`` and ``completion`` text; save to ``out_dir``.

    ``render_prompt(tokenizer, prompt)`` turns the raw prompt into the text the model
    sees (its chat template); the completion ends with the tokenizer's end-of-turn token.
    """
    from trl import SFTConfig, SFTTrainer

    model, tokenizer, dataset = prepare(model_path, dataset, render_prompt, ("completion",),
                                        f"no training examples for {out_dir.name}; check the split it is trained on")
    args = SFTConfig(**common_args(spec, out_dir, len(dataset)), completion_only_loss=True, packing=False,
                     dataset_num_proc=None, eos_token=tokenizer.eos_token)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    lean_memory(trainer)
    return run_and_save(trainer, tokenizer, out_dir, spec, model_path, len(dataset), log, "sft")
