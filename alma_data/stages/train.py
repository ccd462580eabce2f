"""Training stages: policy checkpoints (SFT) and the judge, saved as checkpoints of the run.

Each stage decides *what* to train (a :class:`~alma_data.train_job.TrainJob`: splits, base,
knobs) and whether it is already done; the job then runs in this process, or with
``executor=ray`` as a Ray task on a node with the resources ``ray.train_gpus`` /
``ray.train_cpus`` ask for, which reads the splits from the store and commits the
checkpoint to it (:mod:`alma_data.ray_training`).
"""

from __future__ import annotations

from alma_data.models import resolve
from alma_data.precision import resolve_bf16
from alma_data.stages.base import Context, config_hash
from alma_data.store import TableRef
from alma_data.train_job import TrainJob, absolute_runs_dir, run_job

# What an SFT policy checkpoint depends on (not train.trainer: m1a is the same whichever
# trainer the later rounds use).
TRAIN_KEYS = ("model",) + tuple(f"train.{k}" for k in ("epochs", "learning_rate", "batch_size", "gradient_accumulation",
                                                      "max_length", "max_steps", "warmup_ratio", "bf16"))
JUDGE_KEYS = ("model", "judge.scale", "judge.epochs", "judge.learning_rate", "judge.batch_size",
              "judge.max_length", "judge.max_steps", "train.bf16")


def _parallel(ctx: Context) -> dict:
    """train.num_processes joins a checkpoint's configuration hash where it is not 1 (so the
    hashes of checkpoints trained before the key existed stand): data parallelism adds the
    processes' gradients in another order, and an epoch's last step may repeat examples to
    fill every process's batch, so the weights differ in their last bits."""
    n = ctx.recipe.train.num_processes
    return {"num_processes": n} if n != 1 else {}


def _train_checkpoint(ctx: Context, round: int, name: str, h: str, inputs: list[TableRef], *, trainer: str,
                      data: str, spec, base: str) -> None:
    from dataclasses import asdict

    store, recipe = ctx.store, ctx.recipe
    with ctx.stage(round, f"train {name}") as info:
        input_hashes = ctx.inputs_hash(inputs)
        if ctx.checkpoint_current(round, name, h, input_hashes):
            done = store.checkpoint_manifest(round, name)
            info.update(skipped=True, rows=done["training"]["examples"])
            return
        job = TrainJob(runs_dir=absolute_runs_dir(store.runs_dir), run=store.run, round=round, name=name,
                       trainer=trainer, data=data, tables=[(ref.round, ref.table) for ref in inputs], base=base,
                       base_model=recipe.model, spec=asdict(spec), config_hash=h, inputs=input_hashes,
                       bf16_setting=recipe.train.bf16, judge_scale=recipe.judge.scale, dpo_beta=recipe.train.dpo_beta,
                       launcher=recipe.train.launcher, accelerate_config=recipe.train.accelerate_config)
        if recipe.executor == "ray":
            from alma_data.ray_training import train_on_ray

            summary = train_on_ray(recipe, job, ctx.log)
        else:
            from alma_data.executors import this_process

            job.run_by = {"executor": "local", "process": this_process()}
            summary = run_job(job, ctx.log, quiet=ctx.quiet)
        info.update(rows=summary["examples"], rate=f"{summary['examples_seen'] / max(summary['seconds'], 1e-9):.2f} examples/s")


def _policy_spec(ctx: Context, seed: int):
    from training import TrainSpec

    t = ctx.recipe.train
    # bf16=auto is resolved again where the job runs (run_job): a Ray node's GPU decides there.
    return TrainSpec(epochs=t.epochs, learning_rate=t.learning_rate, batch_size=t.batch_size,
                     gradient_accumulation=t.gradient_accumulation, max_length=t.max_length,
                     max_steps=t.max_steps, warmup_ratio=t.warmup_ratio, bf16=resolve_bf16(t.bf16), seed=seed,
                     save_steps=t.save_steps, num_processes=t.num_processes)


def train_policy(ctx: Context, round: int, name: str, seed: int, sft_tables: list[TableRef]) -> None:
    """SFT of the *base* model on the union of SFT splits (the paper's choice)."""
    h = config_hash(ctx.recipe, *TRAIN_KEYS, seed=seed, **_parallel(ctx))
    _train_checkpoint(ctx, round, name, h, sft_tables, trainer="sft", data="policy", spec=_policy_spec(ctx, seed),
                      base=resolve(ctx.recipe.model))


def train_judge(ctx: Context, round: int, name: str, tables: list[TableRef],
                start: tuple[int, str] | None = None) -> None:
    """Train the judge from the base model to answer ``Rating: [[s]]`` to the judge question.

    Seed annotations train it (their held-out rows excepted); in self-distillation the
    judge's own real-valued scores join them, rounded to the answer format's integers,
    and training continues from the judge ``start`` instead of the base model.
    """
    from training import TrainSpec

    j, t = ctx.recipe.judge, ctx.recipe.train
    spec = TrainSpec(epochs=j.epochs, learning_rate=j.learning_rate, batch_size=j.batch_size,
                     max_length=j.max_length, max_steps=j.max_steps, bf16=resolve_bf16(t.bf16),
                     seed=ctx.recipe.seed, save_steps=t.save_steps, num_processes=t.num_processes)
    base = ctx.store.checkpoint_location(*start) if start else resolve(ctx.recipe.model)
    # judge.distill_target=soft joins the hash only where it applies (so rounded judges keep theirs)
    soft = {"distill_target": "soft"} if start and j.distill_target == "soft" else {}
    h = config_hash(ctx.recipe, *JUDGE_KEYS, start=ctx.store.checkpoint_manifest_hash(*start) if start else "",
                    **_parallel(ctx), **soft)
    _train_checkpoint(ctx, round, name, h, tables, trainer="sft_soft" if soft else "sft", data="judge", spec=spec,
                      base=base)


def train_dpo(ctx: Context, round: int, name: str, pairs: TableRef, start: tuple[int, str]) -> None:
    """The alternative trainer: DPO from a round-1 checkpoint on this round's pairs."""
    store = ctx.store
    h = config_hash(ctx.recipe, *TRAIN_KEYS, "train.trainer", "train.dpo_beta",
                    start=store.checkpoint_manifest_hash(*start), **_parallel(ctx))
    _train_checkpoint(ctx, round, name, h, [pairs], trainer="dpo", data="pairs", spec=_policy_spec(ctx, ctx.recipe.seed),
                      base=store.checkpoint_location(*start))
