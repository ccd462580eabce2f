"""The judge on the held-out seed annotations: ``judge_eval`` (a score for each) and
``judge_quality`` (accuracy against the human scores, ``sql/judge_quality.sql``), for each
judge a round trains (round 1's, and round 2's self-distilled one)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from alma_data import schemas
from alma_data.config import Recipe
from alma_data.scoring import open_judge, real_valued_score
from alma_data.sql import register_parquet, run_sql
from alma_data.stage import CheckpointRef, Context, Stage, recipe_keys, shard_count, shard_slice
from alma_data.store import TableRef, write_table

# store.shard_rows is not among them though judge_eval is sharded by it: the hash of every
# judge_eval built so far leaves it out, and adding it now would rebuild them all.
JUDGE_EVAL_KEYS = recipe_keys("judge.scale", "judge.dtype", "dtype", "engine")


def judge_eval_stages(recipe: Recipe, round: int, judge: str = "judge") -> list[Stage]:
    hashed = {"checkpoint": CheckpointRef(round, judge)}
    return [
        Stage(f"judge eval {judge}", round, "judge_eval", judge_eval, inputs=(TableRef(1, "judge_seed"),),
              keys=JUDGE_EVAL_KEYS, hashed=hashed, params={"judge": judge}),
        Stage(f"judge quality {judge}", round, "judge_quality", judge_quality,
              inputs=(TableRef(round, "judge_eval"),), keys=JUDGE_EVAL_KEYS, hashed=hashed, params={"judge": judge}),
    ]


def judge_quality_rows(store, round: int, table: str, judge: str) -> list[dict]:
    """``sql/judge_quality.sql`` over a judge_eval table. On one DuckDB thread: with several,
    float sums add up in whatever order the threads finish, and the metrics (so the table's
    bytes and hash) changed in their last digits from one build to the next."""
    con = store.connect(views=False)
    con.execute("SET threads = 1")
    register_parquet(con, "judge_eval_rows", store.files(round, table))
    return [{"judge": judge, "metric": m, "value": None if v is None else float(v), "n": int(n)}
            for m, v, n in run_sql(con, "judge_quality").fetchall()]


def judge_eval(ctx: Context, stage: Stage, h: str) -> dict:
    """Score the held-out annotations with a judge checkpoint."""
    store, recipe, round, judge = ctx.store, ctx.recipe, stage.round, stage.params["judge"]
    rows = store.read(1, "judge_seed").filter(pa.compute.field("heldout")).to_pylist()
    writer = store.writer(round, "judge_eval", config_hash=h, schema=schemas.JUDGE_EVAL, inputs=stage.inputs)
    per = recipe.store.shard_rows
    n_shards = shard_count(len(rows), per, at_least=1)
    writer.expect(n_shards)
    todo = [i for i in range(n_shards) if i not in writer.done_shards()]
    rate = ""
    if todo:
        engine = open_judge(ctx, round, judge)
        with ctx.progress(sum(len(shard_slice(i, per, len(rows))) for i in todo),
                          f"judging held-out annotations ({judge})", "pair") as bar:
            for i in todo:
                part = [rows[j] for j in shard_slice(i, per, len(rows))]
                probs, score, score_int = real_valued_score(
                    engine, [r["prompt"] for r in part], [r["response"] for r in part], recipe.judge.scale, bar)
                writer.write_shard(i, [
                    {"annotation_id": r["annotation_id"], "prompt_id": r["prompt_id"], "human_score": r["score"],
                     "score": float(s), "score_int": int(si), "probs": p.astype(np.float32).tolist(), "judge": judge}
                    for r, p, s, si in zip(part, probs, score, score_int)])
        rate = f"{engine.stats.scored_per_second:.2f} pairs/s"
        engine.close()
    manifest = writer.finish(expected_shards=n_shards, judge_checkpoint=store.checkpoint_location(round, judge))
    return {"rows": manifest["rows"], "rate": rate}


def judge_quality(ctx: Context, stage: Stage, h: str) -> dict:
    round, judge = stage.round, stage.params["judge"]
    quality = judge_quality_rows(ctx.store, round, "judge_eval", judge)
    m = write_table(ctx.store, round, "judge_quality", quality, config_hash=h, schema=schemas.JUDGE_QUALITY,
                    inputs=stage.inputs)
    ctx.log("  judge quality on held-out annotations: " + ", ".join(
        f"{q['metric']}={q['value']:.3f}" if q["value"] is not None else f"{q['metric']}=n/a" for q in quality))
    return {"rows": m["rows"]}
