"""Judging every response of a round with the round's judge: real-valued scores -> ``judgments``.

From round 3 the judge is the self-distilled one of round 2 when the recipe trains one
(:func:`alma_data.roles.judge_of_round`); the stage list names it, so the judge a round
uses follows from the recipe, not from what the store happens to hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alma_data import schemas
from alma_data.config import Recipe
from alma_data.executors import EngineSpec, ShardJob, ShardRun
from alma_data.roles import judge_of_round
from alma_data.scoring import real_valued_score
from alma_data.sql import register_round_views, run_sql
from alma_data.stage import CheckpointRef, Context, Stage, recipe_keys, shard_count
from alma_data.store import TableRef

JUDGMENT_KEYS = recipe_keys("judge.scale", "judge.dtype", "dtype", "engine", "store.shard_rows")


@dataclass(frozen=True)
class JudgeShard:
    """One shard of judging: (response_id, prompt, response) triples for one judge."""

    rows: list[tuple[str, str, str]]
    scale: int
    judge: str
    """The judge's label in the rows (``round=1/judge``)."""


def judge_shard(engine, shard: JudgeShard, progress=None) -> list[dict]:
    """Rows of one judging shard: real-valued scores; every executor runs this same function."""
    probs, score, score_int = real_valued_score(engine, [r[1] for r in shard.rows], [r[2] for r in shard.rows],
                                                shard.scale, progress)
    return [{"response_id": r[0], "score": float(s), "score_int": int(si),
             "probs": p.astype(np.float32).tolist(), "judge": shard.judge}
            for r, p, s, si in zip(shard.rows, probs, score, score_int)]


def judgments_stage(recipe: Recipe, round: int) -> Stage:
    judge = CheckpointRef(*judge_of_round(recipe, round))
    return Stage("judgments", round, "judgments", judge_responses,
                 inputs=(TableRef(round, "responses"), TableRef(round, "prompts")),
                 keys=JUDGMENT_KEYS, hashed={"judge": judge}, sharded=True, params={"judge": judge})


def judge_responses(ctx: Context, stage: Stage, h: str) -> dict:
    recipe, store, round = ctx.recipe, ctx.store, stage.round
    judge: CheckpointRef = stage.params["judge"]
    con = store.connect(views=False)
    register_round_views(con, store, round, ("prompts", "responses"))
    rows = run_sql(con, "judge_inputs").fetchall()
    per = recipe.store.shard_rows
    n_shards = shard_count(len(rows), per, at_least=1)
    writer = store.writer(round, "judgments", config_hash=h, schema=schemas.JUDGMENTS, inputs=stage.inputs)
    writer.expect(n_shards)
    label = f"round={judge.round}/{judge.name}"
    shards = [(i, JudgeShard(rows[i * per:(i + 1) * per], recipe.judge.scale, label))
              for i in range(n_shards) if i not in writer.done_shards()]
    job = ShardJob(EngineSpec(store.checkpoint_location(judge.round, judge.name), name=judge.name, round=judge.round,
                              role="score"), shards)
    ran = ShardRun(executor=recipe.executor)
    if shards:
        with ctx.progress(sum(len(sh.rows) for _, sh in shards), f"judging (round {round})", "pair") as bar:
            ran = ctx.executor().run(judge_shard, [job], writer, bar)
    m = writer.finish(expected_shards=n_shards, judge=label, run_by=ran.provenance())
    return {"rows": m["rows"], "rate": ran.rate("pairs")}
