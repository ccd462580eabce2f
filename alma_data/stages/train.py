"""Training stages: policy checkpoints (SFT) and the judge, saved as checkpoints of the run."""

from __future__ import annotations

import json
import math
import shutil

from alma_data.models import resolve
from alma_data.precision import describe, resolve_bf16
from alma_data.prompting import judge_question, judge_target, render_chat
from alma_data.stages.base import Context, config_hash
from alma_data.store import TableRef, local_model_path

# What an SFT policy checkpoint depends on (not train.trainer: m1a is the same whichever
# trainer the later rounds use).
TRAIN_KEYS = ("model",) + tuple(f"train.{k}" for k in ("epochs", "learning_rate", "batch_size", "gradient_accumulation",
                                                      "max_length", "max_steps", "warmup_ratio", "bf16"))
JUDGE_KEYS = ("model", "judge.scale", "judge.epochs", "judge.learning_rate", "judge.batch_size",
              "judge.max_length", "judge.max_steps", "train.bf16")


def _train_checkpoint(ctx: Context, round: int, name: str, h: str, inputs: list[TableRef], make_dataset,
                      spec, base: str, render, trainer=None) -> None:
    from training import train_sft

    trainer = trainer or train_sft
    store = ctx.store
    with ctx.stage(round, f"train {name}") as info:
        input_hashes = ctx.inputs_hash(inputs)
        if ctx.checkpoint_current(round, name, h, input_hashes):
            done = store.checkpoint_manifest(round, name)
            info.update(skipped=True, rows=done["training"]["examples"])
            return
        tmp = store.checkpoint_staging(round, name)
        # A training stopped with the same inputs and configuration resumes from its last
        # saved state (train.save_steps); anything else in the staging folder is stale.
        marker = {"config_hash": h, "inputs": input_hashes, "base": base}
        resumable = tmp / "_resume.json"
        if not (resumable.is_file() and json.loads(resumable.read_text()) == marker):
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            resumable.write_text(json.dumps(marker))
        dataset = make_dataset()
        precision = _precision(ctx, spec)
        ctx.log(f"  training {name} from {base} on {len(dataset)} examples in {precision['dtype']} "
                f"({precision['why']})")
        summary = trainer(local_model_path(base), dataset, tmp, spec, log=ctx.log, render_prompt=render)
        resumable.unlink()
        store.commit_checkpoint(tmp, round, name, {
            "config_hash": h, "inputs": input_hashes, "base_model": ctx.recipe.model, "started_from": base,
            "training": summary, "precision": precision,
        })
        info.update(rows=summary["examples"], rate=f"{summary['examples_seen'] / max(summary['seconds'], 1e-9):.2f} examples/s")


def _precision(ctx: Context, spec) -> dict:
    """What the checkpoint's manifest says about the precision it was trained in, and why."""
    setting = ctx.recipe.train.bf16
    info = describe()
    dtype = "bfloat16" if spec.bf16 else "float32"
    if setting == "auto":
        why = (f"train.bf16=auto: {info['device_name']} computes bf16 natively" if info["bf16_native"] else
               f"train.bf16=auto: {info['device_name']} has no native bf16, where it is emulated and slow")
    else:
        why = f"train.bf16={str(setting).lower()}"
    return {"dtype": dtype, "setting": setting, "why": why, **info}


def _policy_spec(ctx: Context, seed: int):
    from training import TrainSpec

    t = ctx.recipe.train
    return TrainSpec(epochs=t.epochs, learning_rate=t.learning_rate, batch_size=t.batch_size,
                     gradient_accumulation=t.gradient_accumulation, max_length=t.max_length,
                     max_steps=t.max_steps, warmup_ratio=t.warmup_ratio, bf16=resolve_bf16(t.bf16), seed=seed,
                     save_steps=t.save_steps)


def train_policy(ctx: Context, round: int, name: str, seed: int, sft_tables: list[TableRef]) -> None:
    """SFT of the *base* model on the union of SFT splits (the paper's choice)."""
    from training import parquet_dataset

    spec = _policy_spec(ctx, seed)
    files = [f for ref in sft_tables for f in ctx.store.download(ref.round, ref.table)]
    h = config_hash(ctx.recipe, *TRAIN_KEYS, seed=seed)

    def make_dataset():
        return parquet_dataset(files, ["prompt", "response"],
                               lambda r: {"prompt": r["prompt"], "completion": r["response"]})

    _train_checkpoint(ctx, round, name, h, sft_tables, make_dataset, spec, resolve(ctx.recipe.model), render_chat)


def train_judge(ctx: Context, round: int, name: str, tables: list[TableRef],
                start: tuple[int, str] | None = None) -> None:
    """Train the judge from the base model to answer ``Rating: [[s]]`` to the judge question.

    Seed annotations train it (their held-out rows excepted); in self-distillation the
    judge's own real-valued scores join them, rounded to the answer format's integers,
    and training continues from the judge ``start`` instead of the base model.
    """
    import datasets

    from training import TrainSpec, parquet_dataset

    j, scale = ctx.recipe.judge, ctx.recipe.judge.scale
    spec = TrainSpec(epochs=j.epochs, learning_rate=j.learning_rate, batch_size=j.batch_size,
                     max_length=j.max_length, max_steps=j.max_steps, bf16=resolve_bf16(ctx.recipe.train.bf16),
                     seed=ctx.recipe.seed, save_steps=ctx.recipe.train.save_steps)
    base = ctx.store.checkpoint_location(*start) if start else resolve(ctx.recipe.model)
    h = config_hash(ctx.recipe, *JUDGE_KEYS, start=ctx.store.checkpoint_manifest_hash(*start) if start else "")

    def make_dataset():
        parts = []
        for ref in tables:
            files = ctx.store.download(ref.round, ref.table)
            has_heldout = "heldout" in ctx.store.manifest(ref.round, ref.table)["columns"]
            ds = parquet_dataset(files, ["prompt", "response", "score"] + (["heldout"] if has_heldout else []))
            if has_heldout:
                ds = ds.filter(lambda r: not r["heldout"]).remove_columns("heldout")
            parts.append(ds.map(lambda r: {"prompt": judge_question(r["prompt"], r["response"], scale),
                                           "completion": judge_target(int(math.floor(r["score"] + 0.5)))},
                                remove_columns=ds.column_names))
        return datasets.concatenate_datasets(parts)

    _train_checkpoint(ctx, round, name, h, tables, make_dataset, spec, base, render_chat)


def train_dpo(ctx: Context, round: int, name: str, pairs: TableRef, start: tuple[int, str]) -> None:
    """The alternative trainer: DPO from a round-1 checkpoint on this round's pairs."""
    from training import parquet_dataset
    from training.dpo import train_dpo as run_dpo

    t = ctx.recipe.train
    spec = _policy_spec(ctx, ctx.recipe.seed)
    store = ctx.store
    base = store.checkpoint_location(*start)
    h = config_hash(ctx.recipe, *TRAIN_KEYS, "train.trainer", "train.dpo_beta",
                    start=store.checkpoint_manifest_hash(*start))

    def make_dataset():
        return parquet_dataset(store.download(pairs.round, pairs.table), ["prompt", "chosen", "rejected"])

    def train(base_path, dataset, out, spec_, log, render_prompt):
        return run_dpo(base_path, dataset, out, spec_, beta=t.dpo_beta, log=log, render_prompt=render_prompt)

    _train_checkpoint(ctx, round, name, h, [pairs], make_dataset, spec, base, render_chat, trainer=train)
