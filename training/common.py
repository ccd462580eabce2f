"""What the SFT and DPO trainers share: the knobs, the data, saving and the summary."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

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
    save_steps: int = 0
    """Save the trainer's state every this many steps (0: never), for resuming."""
    num_processes: int = 1
    """Data-parallel processes the effective batch (``batch_size x gradient_accumulation``)
    is spread over; each sees ``per_device x accumulation`` of it a step (:func:`layout`)."""


class LayoutError(ValueError):
    """The recipe's effective batch cannot be split evenly over the processes."""


def layout(spec: TrainSpec) -> tuple[int, int]:
    """(per-device batch, accumulation steps) so that processes x per-device x accumulation is
    the recipe's effective batch, ``batch_size x gradient_accumulation``, with the per-device
    batch at most the recipe's ``batch_size`` (what it deemed fits a device) and as few
    accumulation steps as that allows. A step then covers the same consecutive examples of
    the shuffled order as one process would: the sampler's permutation is the same on every
    process (seeded by ``data_seed``) and process k takes every k-th per-device batch."""
    n = max(1, spec.num_processes)
    effective = spec.batch_size * spec.gradient_accumulation
    if n == 1:
        return spec.batch_size, spec.gradient_accumulation
    if effective % n:
        raise LayoutError(
            f"train.batch_size x train.gradient_accumulation = {spec.batch_size} x {spec.gradient_accumulation} = "
            f"{effective} examples a step cannot be split over train.num_processes={n}: choose a process count "
            f"that divides {effective}, or a batch_size / gradient_accumulation whose product it divides")
    share = effective // n
    accumulation = next(d for d in range(1, share + 1) if share % d == 0 and share // d <= spec.batch_size)
    return share // accumulation, accumulation


def is_main_process() -> bool:
    """Rank 0 of a launched training (``accelerate launch`` sets RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def load_base(model_path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return model, tokenizer


def prepare(model_path: str, dataset, render_prompt: Callable | None, answer_fields: tuple[str, ...],
            empty_message: str):
    """Load the model and tokenizer, and render each row for training: the prompt through
    ``render_prompt(tokenizer, prompt)`` (its chat template), each answer ended by the
    tokenizer's end-of-turn token."""
    if len(dataset) == 0:
        raise ValueError(empty_message)
    model, tokenizer = load_base(model_path)
    eos = tokenizer.eos_token

    def format_row(row: dict) -> dict:
        out = {"prompt": render_prompt(tokenizer, row["prompt"]) if render_prompt else row["prompt"]}
        out.update({k: row[k] + eos for k in answer_fields})
        return out

    return model, tokenizer, dataset.map(format_row)


def lean_memory(trainer, lm_head: bool = True) -> None:
    """What keeps a CPU training's peak memory down, on a trainer just made: glibc's free heap
    given back after each decoder layer (:mod:`training.heap`) and, for TRL's SFT, the loss
    over the LM head in chunks of the labelled rows (:mod:`training.lm_head`). Neither changes
    what is learned beyond the order floats are added in; on a GPU neither does anything."""
    from training.heap import trim_between_layers
    from training.lm_head import lean_lm_head

    model = trainer.model
    trim_between_layers(model)
    if lm_head:
        lean_lm_head(model)


def parquet_dataset(files: list[str | Path], columns: list[str], to_example: Callable[[dict], dict] | None = None):
    """A ``datasets.Dataset`` straight from the store's shards (optionally mapped to prompt/completion)."""
    import datasets

    # Only the needed columns: tables of different rounds may carry different extras.
    ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", columns=columns)
    return ds if to_example is None else ds.map(to_example, remove_columns=columns)


def common_args(spec: TrainSpec, out_dir: Path, n_examples: int) -> dict[str, Any]:
    """TrainingArguments both TRL configs take."""
    per_device, accumulation = layout(spec)
    return dict(
        output_dir=str(out_dir / "_trainer"),
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=spec.warmup_ratio,  # a float below 1 is a ratio of all steps
        max_length=spec.max_length,
        bf16=spec.bf16,
        use_cpu=not torch.cuda.is_available(),
        seed=spec.seed,
        data_seed=spec.seed,
        save_strategy="steps" if spec.save_steps > 0 else "no",
        save_steps=spec.save_steps if spec.save_steps > 0 else 500,
        save_total_limit=1,  # only the newest resume point
        report_to="none",
        logging_steps=max(1, min(10, n_examples // max(1, spec.batch_size) // 4)),
        # A build not --verbose: no bar of the trainer's own (the stage's line says what it did)
        disable_tqdm=libraries_quiet(),
    )


def libraries_quiet() -> bool:
    """Whether the build that runs this training keeps the libraries' output off the terminal
    (alma_data/console.py sets it, for this process and a launched training's processes)."""
    return os.environ.get("ALMA_DATA_LIBRARY_OUTPUT") == "quiet"


def step_lines(trainer, kind: str) -> None:
    """With its bar off, the trainer's logs are lines in words on stderr (which a quiet build
    sends to its log file), ``sft step 4/8: loss 2.591, grad norm 3.12, learning rate 0.0005, epoch 0.5``,
    in place of the dict its PrinterCallback prints."""
    from transformers import PrinterCallback, TrainerCallback

    class StepLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not (state.is_world_process_zero and logs):
                return
            words = ", ".join(f"{k.replace('_', ' ')} "
                              f"{f'{v:.4g}' if isinstance(v, float) else v}"
                              for k, v in logs.items() if k != "total_flos")
            at = "done" if "train_runtime" in logs else f"step {state.global_step}/{state.max_steps}"
            print(f"  {kind} {at}: {words}", file=sys.stderr, flush=True)

    if trainer.args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(StepLines())


def last_complete_save(folder: Path, world_size: int = 1, remove: bool = True) -> Path | None:
    """The newest ``checkpoint-N`` the trainer finished saving (its ``trainer_state.json`` is
    written last by rank 0; with several processes each also leaves its ``rng_state_K.pth``,
    which may come after); newer ones cut short by a kill are removed (``remove``)."""
    if not folder.is_dir():
        return None
    saves = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()),
                   key=lambda p: int(p.name.split("-", 1)[1]), reverse=True)
    for p in saves:
        try:
            json.loads((p / "trainer_state.json").read_text())
            if world_size > 1 and not all((p / f"rng_state_{k}.pth").is_file() for k in range(world_size)):
                raise OSError("a process's state is missing")
            return p
        except (OSError, ValueError):  # missing, or cut short mid-write
            if remove:
                shutil.rmtree(p, ignore_errors=True)
    return None


def run_and_save(trainer, tokenizer, out_dir: Path, spec: TrainSpec, base: str, n_examples: int,
                 log: Callable[[str], None], kind: str) -> dict[str, Any]:
    t0 = time.time()
    main = is_main_process()
    world = max(1, spec.num_processes)
    # A launcher cleans up cut-short saves before it starts the processes; they only look.
    resume = last_complete_save(out_dir / "_trainer", world, remove=world == 1)
    if resume and main:
        log(f"  {kind}: resuming from {resume.name} (saved before the last stop)")
    step_lines(trainer, kind)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.time() - t0
    trainer.save_model(str(out_dir))  # only rank 0 writes
    if not main:
        return {}
    tokenizer.save_pretrained(str(out_dir))
    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
    seen = min(n_examples * spec.epochs, result.global_step * spec.batch_size * spec.gradient_accumulation) \
        if spec.max_steps > 0 else n_examples * spec.epochs
    per_device, accumulation = layout(spec)
    dist = torch.distributed
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    summary = {
        "trainer": kind,
        "base": base,
        "examples": n_examples,
        "examples_seen": int(seen),
        "steps": result.global_step,
        "train_loss": float(result.training_loss),
        "seconds": round(seconds, 2),
        "world_size": world,
        "backend": backend,
        "per_device_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "effective_batch_size": world * per_device * accumulation,
        "spec": asdict(spec),
    }
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    log(f"  {kind}: {n_examples} examples ({int(seen)} seen), {result.global_step} steps in {seconds:.1f}s, "
        f"loss {result.training_loss:.3f}, {seen / max(seconds, 1e-9):.2f} examples/s")
    return summary
