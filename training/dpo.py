"""DPO with TRL over the store's preference pairs (prompt, chosen, rejected)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from training.common import TrainSpec, common_args, lean_memory, prepare, run_and_save


def train_dpo(model_path: str, dataset, out_dir: Path, spec: TrainSpec, *, beta: float = 0.1,
              log: Callable[[str], None] = print, render_prompt: Callable | None = None) -> dict:
    """DPO from ``model_path`` (also the frozen reference) on ``prompt``/``chosen``/``rejected`` rows."""
    from trl import DPOConfig, DPOTrainer

    model, tokenizer, dataset = prepare(
        model_path, dataset, render_prompt, ("chosen", "rejected"),
        f"no preference pairs for {out_dir.name}: every prompt's responses tied; sample more")
    args = DPOConfig(**common_args(spec, out_dir, len(dataset)), beta=beta)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    lean_memory(trainer, lm_head=False)  # DPO keeps TRL's LM head (its own per-token fields)
    return run_and_save(trainer, tokenizer, out_dir, spec, model_path, len(dataset), log, "dpo")
