"""Real-valued judging: read the judge's probabilities of 0..S after ``Rating: [[``.

The score is the expectation under the renormalised probabilities (e.g. 7.31); the
integer score (argmax) is kept beside it. Integer scores tie constantly, the
expectation breaks the ties (paper: RewardBench 0.669 -> 0.846).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from alma_data import schemas
from alma_data.engines import Engine, expected_score
from alma_data.prompting import RATING_PREFIX, RATING_SUFFIX, judge_question, render_chat
from alma_data.sql import register_parquet, run_sql
from alma_data.stages.base import Context, config_hash
from alma_data.store import TableRef, write_table


def real_valued_score(engine: Engine, prompts: list[str], responses: list[str], scale: int = 10,
                      progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs [n, scale+1], real-valued scores, integer scores) for (prompt, response) pairs."""
    questions = [render_chat(engine.tokenizer, judge_question(p, r, scale)) + RATING_PREFIX
                 for p, r in zip(prompts, responses)]
    probs = engine.score_candidates(questions, [str(s) for s in range(scale + 1)], suffix=RATING_SUFFIX,
                                    progress=progress)
    return probs, expected_score(probs), probs.argmax(axis=-1)


def open_judge(ctx: Context, round: int, name: str = "judge") -> Engine:
    return ctx.open_engine(ctx.store.checkpoint_location(round, name), name=name, round=round, role="score")


def judge_quality_rows(store, round: int, table: str, judge: str) -> list[dict]:
    """``sql/judge_quality.sql`` over a judge_eval table. On one DuckDB thread: with several,
    float sums add up in whatever order the threads finish, and the metrics (so the table's
    bytes and hash) changed in their last digits from one build to the next."""
    con = store.connect(views=False)
    con.execute("SET threads = 1")
    register_parquet(con, "judge_eval_rows", store.files(round, table))
    return [{"judge": judge, "metric": m, "value": None if v is None else float(v), "n": int(n)}
            for m, v, n in run_sql(con, "judge_quality").fetchall()]


def judge_eval(ctx: Context, round: int, judge: str) -> None:
    """Score the held-out annotations with a judge checkpoint; write judge_eval and judge_quality."""
    store, recipe = ctx.store, ctx.recipe
    table = "judge_eval"
    inputs = [TableRef(1, "judge_seed")]
    h = config_hash(recipe, "judge.scale", "judge.dtype", "dtype", "engine", checkpoint=store.checkpoint_manifest_hash(round, judge))
    with ctx.stage(round, f"judge eval {judge}") as info:
        if ctx.table_current(round, table, h, inputs) and ctx.table_current(round, "judge_quality", h, [TableRef(round, table)]):
            info.update(skipped=True, rows=store.manifest(round, table)["rows"])
            return
        seeds = store.read(1, "judge_seed").filter(pa.compute.field("heldout"))
        rows = seeds.to_pylist()
        writer = store.writer(round, table, config_hash=h, schema=schemas.JUDGE_EVAL, inputs=inputs)
        shard_rows = recipe.store.shard_rows
        n_shards = max(1, -(-len(rows) // shard_rows))
        writer.expect(n_shards)
        todo = [i for i in range(n_shards) if i not in writer.done_shards()]
        if todo:
            engine = open_judge(ctx, round, judge)
            with ctx.progress(sum(len(rows[i * shard_rows:(i + 1) * shard_rows]) for i in todo),
                              f"judging held-out annotations ({judge})", "pair") as bar:
                for i in todo:
                    part = rows[i * shard_rows:(i + 1) * shard_rows]
                    probs, score, score_int = real_valued_score(
                        engine, [r["prompt"] for r in part], [r["response"] for r in part], recipe.judge.scale, bar)
                    writer.write_shard(i, [
                        {"annotation_id": r["annotation_id"], "prompt_id": r["prompt_id"], "human_score": r["score"],
                         "score": float(s), "score_int": int(si), "probs": p.astype(np.float32).tolist(), "judge": judge}
                        for r, p, s, si in zip(part, probs, score, score_int)])
            rate = f"{engine.stats.scored_per_second:.2f} pairs/s"
            engine.close()
        else:
            rate = ""
        manifest = writer.finish(expected_shards=n_shards, judge_checkpoint=store.checkpoint_location(round, judge))
        quality = judge_quality_rows(store, round, table, judge)
        write_table(store, round, "judge_quality", quality, config_hash=h, schema=schemas.JUDGE_QUALITY,
                    inputs=[TableRef(round, table)])
        info.update(rows=manifest["rows"], rate=rate)
        ctx.log("  judge quality on held-out annotations: " + ", ".join(
            f"{q['metric']}={q['value']:.3f}" if q["value"] is not None else f"{q['metric']}=n/a" for q in quality))
