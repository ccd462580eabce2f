"""Training stages: policy checkpoints (SFT) and the judge, saved as checkpoints of the run.

Each stage decides *what* to train (a :class:`~alma_data.train_job.TrainJob`: splits, base,
knobs) and whether it is already done; the job then runs in this process, or with
``executor=ray`` as a Ray task on a node with the resources ``ray.train_gpus`` /
``ray.train_cpus`` ask for, which reads the splits from the store and commits the
checkpoint to it (:mod:`alma_data.ray_training`).
"""

from __future__ import annotations

from dataclasses import asdict

from alma_data.config import Recipe
from alma_data.models import resolve
from alma_data.precision import resolve_bf16
from alma_data.stage import CheckpointRef, Context, Stage, recipe_keys
from alma_data.store import TableRef
from alma_data.train_job import TrainJob, absolute_runs_dir, run_job

# What an SFT policy checkpoint depends on (not train.trainer: m1a is the same whichever
# trainer the later rounds use).
TRAIN_KEYS = recipe_keys("model", *(f"train.{k}" for k in ("epochs", "learning_rate", "batch_size",
                                                             "gradient_accumulation", "max_length", "max_steps",
                                                             "warmup_ratio", "bf16")))
JUDGE_KEYS = recipe_keys("model", "judge.scale", "judge.epochs", "judge.learning_rate", "judge.batch_size",
                         "judge.max_length", "judge.max_steps", "train.bf16")
DPO_KEYS = TRAIN_KEYS + recipe_keys("train.trainer", "train.dpo_beta")


def _parallel(recipe: Recipe) -> dict:
    """train.num_processes joins a checkpoint's configuration hash where it is not 1 (so the
    hashes of checkpoints trained before the key existed stand): data parallelism adds the
    processes' gradients in another order, and an epoch's last step may repeat examples to
    fill every process's batch, so the weights differ in their last bits."""
    n = recipe.train.num_processes
    return {"num_processes": n} if n != 1 else {}


def policy_stage(recipe: Recipe, round: int, name: str, seed: int, sft_tables: list[TableRef]) -> Stage:
    """SFT of the *base* model on the union of SFT splits (the paper's choice)."""
    return Stage(f"train {name}", round, name, _train_policy, kind="checkpoint", inputs=tuple(sft_tables),
                 keys=TRAIN_KEYS, hashed={"seed": seed, **_parallel(recipe)}, params={"seed": seed})


def judge_stage(recipe: Recipe, round: int, tables: list[TableRef], start: CheckpointRef | None = None) -> Stage:
    """Train the judge from the base model to answer ``Rating: [[s]]`` to the judge question.

    Seed annotations train it (their held-out rows excepted); in self-distillation the
    judge's own real-valued scores join them, rounded to the answer format's integers,
    and training continues from the judge ``start`` instead of the base model.
    """
    # judge.distill_target=soft joins the hash only where it applies (so rounded judges keep theirs)
    soft = {"distill_target": "soft"} if start and recipe.judge.distill_target == "soft" else {}
    return Stage("train judge", round, "judge", _train_judge, kind="checkpoint", inputs=tuple(tables),
                 keys=JUDGE_KEYS, hashed={"start": start or "", **_parallel(recipe), **soft},
                 params={"start": start, "soft": bool(soft)})


def dpo_stage(recipe: Recipe, round: int, name: str, pairs: TableRef, start: CheckpointRef) -> Stage:
    """The alternative trainer: DPO from a round-1 checkpoint on this round's pairs."""
    return Stage(f"train {name}", round, name, _train_dpo, kind="checkpoint", inputs=(pairs,), keys=DPO_KEYS,
                 hashed={"start": start, **_parallel(recipe)}, params={"start": start})


def _start_location(ctx: Context, start) -> str:
    """The checkpoint a training starts from, its files hashed against its manifest first."""
    from alma_data.store.integrity import require_checkpoint_hashed

    require_checkpoint_hashed(ctx.store, start.round, start.name)
    return ctx.store.checkpoint_location(start.round, start.name)


def _train_checkpoint(ctx: Context, stage: Stage, h: str, *, trainer: str, data: str, spec, base: str) -> dict:
    store, recipe = ctx.store, ctx.recipe
    job = TrainJob(runs_dir=absolute_runs_dir(store.runs_dir), run=store.run, round=stage.round, name=stage.output,
                   trainer=trainer, data=data, tables=[(ref.round, ref.table) for ref in stage.inputs], base=base,
                   base_model=recipe.model, spec=asdict(spec), config_hash=h, inputs=ctx.inputs_hash(stage.inputs),
                   bf16_setting=recipe.train.bf16, judge_scale=recipe.judge.scale, dpo_beta=recipe.train.dpo_beta,
                   launcher=recipe.train.launcher, accelerate_config=recipe.train.accelerate_config)
    if recipe.executor != "ray":  # on Ray the job runs on another node, with that node's memory
        warn_if_too_big(ctx, stage, trainer, spec)
    if recipe.executor == "ray":
        from alma_data.ray_training import train_on_ray

        summary = train_on_ray(recipe, job, ctx.log)
    else:
        from alma_data.executors import this_process

        job.run_by = {"executor": "local", "process": this_process()}
        summary = run_job(job, ctx.log, quiet=ctx.quiet)
    return {"rows": summary["examples"],
            "rate": f"{summary['examples_seen'] / max(summary['seconds'], 1e-9):.2f} examples/s"}


def warn_if_too_big(ctx: Context, stage: Stage, trainer: str, spec) -> None:
    """One line before a training that would not fit in the memory available
    (:func:`alma_data.memory.training_estimate`); a warning, since the estimate is rough and
    the system may find the memory (swap, caches given back)."""
    from alma_data.memory import model_shape, training_estimate, would_not_fit

    shape = model_shape(resolve(ctx.recipe.model))  # every training starts from the recipe model's architecture
    if shape is None:
        return
    from training.common import LayoutError, layout

    processes = spec.num_processes if ctx.recipe.train.launcher == "accelerate" else 1
    try:
        per_device = layout(spec)[0]
    except LayoutError:
        return  # the launcher says so in its own words
    # the soft-target judge trains without gradient checkpointing (training/distill.py)
    needed, what = training_estimate(shape, batch_size=per_device, max_length=spec.max_length, trainer=trainer,
                                     processes=processes, gradient_checkpointing=trainer != "sft_soft")
    fix = ("lower judge.batch_size or judge.max_length" if stage.output == "judge" else
           "lower train.batch_size (raising train.gradient_accumulation keeps the effective batch) or train.max_length")
    line = would_not_fit(needed, what, fix + ", or free memory")
    if line:
        ctx.log(f"[round {stage.round}] {stage.name}: {line}")


def _policy_spec(recipe: Recipe, seed: int):
    from training import TrainSpec

    t = recipe.train
    # bf16=auto is resolved again where the job runs (run_job): a Ray node's GPU decides there.
    return TrainSpec(epochs=t.epochs, learning_rate=t.learning_rate, batch_size=t.batch_size,
                     gradient_accumulation=t.gradient_accumulation, max_length=t.max_length,
                     max_steps=t.max_steps, warmup_ratio=t.warmup_ratio, bf16=resolve_bf16(t.bf16), seed=seed,
                     save_steps=t.save_steps, num_processes=t.num_processes)


def _train_policy(ctx: Context, stage: Stage, h: str) -> dict:
    return _train_checkpoint(ctx, stage, h, trainer="sft", data="policy",
                             spec=_policy_spec(ctx.recipe, stage.params["seed"]), base=resolve(ctx.recipe.model))


def _train_judge(ctx: Context, stage: Stage, h: str) -> dict:
    from training import TrainSpec

    j, t = ctx.recipe.judge, ctx.recipe.train
    spec = TrainSpec(epochs=j.epochs, learning_rate=j.learning_rate, batch_size=j.batch_size,
                     max_length=j.max_length, max_steps=j.max_steps, bf16=resolve_bf16(t.bf16),
                     seed=ctx.recipe.seed, save_steps=t.save_steps, num_processes=t.num_processes)
    start = stage.params["start"]
    base = _start_location(ctx, start) if start else resolve(ctx.recipe.model)
    return _train_checkpoint(ctx, stage, h, trainer="sft_soft" if stage.params["soft"] else "sft", data="judge",
                             spec=spec, base=base)


def _train_dpo(ctx: Context, stage: Stage, h: str) -> dict:
    start = stage.params["start"]
    return _train_checkpoint(ctx, stage, h, trainer="dpo", data="pairs", spec=_policy_spec(ctx.recipe, ctx.recipe.seed),
                             base=_start_location(ctx, start))
