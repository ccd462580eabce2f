"""Supervised fine-tuning with TRL over prompt/completion rows read from the store.

Used for the policy (seed pairs, best-of-n splits) and for the judge (judge questions
answered ``Rating: [[s]]``): both are SFT on prompt -> completion with the loss on the
completion only.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass
class TrainSpec:
    epochs: float = 1.0
    learning_rate: float = 5e-5
    batch_size: int = 8
    gradient_accumulation: int = 1
    max_length: int = 384
    max_steps: int = -1
    warmup_ratio: float = 0.05
    bf16: bool = False
    seed: int = 0


def load_base(model_path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return model, tokenizer


def parquet_dataset(files: list[str | Path], columns: list[str], to_example: Callable[[dict], dict] | None = None):
    """A ``datasets.Dataset`` straight from the store's shards (optionally mapped to prompt/completion)."""
    import datasets

    ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    ds = ds.select_columns(columns)
    return ds if to_example is None else ds.map(to_example, remove_columns=columns)


def train_sft(model_path: str, dataset, out_dir: Path, spec: TrainSpec, *, log: Callable[[str], None] = print,
              render_prompt: Callable | None = None) -> dict:
    """Fine-tune ``model_path`` on a dataset with ``prompt`` and ``completion`` text; save to ``out_dir``.

    ``render_prompt(tokenizer, prompt)`` turns the raw prompt into the text the model
    sees (its chat template); the completion gets the tokenizer's end-of-turn token.
    """
    from trl import SFTConfig, SFTTrainer

    if len(dataset) == 0:
        raise ValueError(f"no training examples for {out_dir.name}; check the split it is trained on")
    model, tokenizer = load_base(model_path)
    eos = tokenizer.eos_token

    def format_row(row: dict) -> dict:
        prompt = render_prompt(tokenizer, row["prompt"]) if render_prompt else row["prompt"]
        return {"prompt": prompt, "completion": row["completion"] + eos}

    dataset = dataset.map(format_row)
    use_cuda = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(out_dir / "_trainer"),
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=spec.warmup_ratio,  # a float below 1 is a ratio of all steps
        max_length=spec.max_length,
        completion_only_loss=True,
        packing=False,
        bf16=spec.bf16,
        use_cpu=not use_cuda,
        seed=spec.seed,
        data_seed=spec.seed,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, min(10, len(dataset) // max(1, spec.batch_size) // 4)),
        dataset_num_proc=None,
        eos_token=eos,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    t0 = time.time()
    result = trainer.train()
    seconds = time.time() - t0
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    import shutil

    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
    summary = {
        "base": model_path,
        "examples": len(dataset),
        "steps": result.global_step,
        "train_loss": float(result.training_loss),
        "seconds": round(seconds, 2),
        "spec": asdict(spec),
    }
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    log(f"trained {len(dataset)} examples, {result.global_step} steps in {seconds:.1f}s "
        f"(loss {result.training_loss:.3f}, {len(dataset) * spec.epochs / max(seconds, 1e-9):.2f} examples/s)")
    return summary
