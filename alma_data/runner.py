"""One runner for every stage: skip what is current, run the rest, time and count each.

A stage's output is current when it is done, passes the cheap integrity check, and its
manifest records this stage's configuration hash and its inputs' manifest hashes; a damaged
one is repaired by writing again just what is damaged. Anything else runs, resuming from
the shards a stopped run left. The lock (one build of a run at a time) and the run's
closing line are :func:`alma_data.round.build`'s.
"""

from __future__ import annotations

from typing import Iterable

from alma_data.stage import Context, Stage


def is_current(ctx: Context, stage: Stage, config_hash: str) -> bool:
    if stage.kind == "checkpoint":
        inputs = ctx.inputs_hash(stage.inputs)
        return ctx.checkpoint_current(stage.round, stage.output, config_hash, inputs)
    return ctx.table_current(stage.round, stage.output, config_hash, stage.inputs)


def done_rows(ctx: Context, stage: Stage) -> int:
    """What a finished output counts: a table's rows, a checkpoint's training examples."""
    if stage.kind == "checkpoint":
        return ctx.store.checkpoint_manifest(stage.round, stage.output)["training"]["examples"]
    return ctx.store.manifest(stage.round, stage.output)["rows"]


def run_stage(ctx: Context, stage: Stage) -> None:
    config_hash = stage.config_hash(ctx.recipe, ctx.store)
    with ctx.stage(stage.round, stage.name) as info:
        if is_current(ctx, stage, config_hash):
            info.update(skipped=True, rows=done_rows(ctx, stage))
            return
        if ctx.out is not None:
            ctx.out.before_work()
        info.update(stage.run(ctx, stage, config_hash) or {})


def run_stages(ctx: Context, stages: Iterable[Stage], after_seeds=None) -> None:
    """Each stage in order; ``after_seeds()`` once the stages that read the seed files passed."""
    stages = list(stages)
    last_seed = max((i for i, st in enumerate(stages) if st.reads_seed_files), default=None)
    for i, stage in enumerate(stages):
        run_stage(ctx, stage)
        if i == last_seed and after_seeds is not None:
            after_seeds()
