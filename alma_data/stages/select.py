"""Selection in SQL: best-of-n -> ``sft``, preference pairs -> ``dpo``, a sample -> ``judge_distill``.

The picks of all three are made once (``sql/select_picks.sql``); each table's file formats its rows.
"""

from __future__ import annotations

import pyarrow as pa

from alma_data import schemas
from alma_data.ids import seed_int
from alma_data.sql import load_sql, run_sql
from alma_data.stages.base import Context, config_hash
from alma_data.stages.responses import register_round_views
from alma_data.store import TableRef, write_table

SFT_BEST = pa.schema(list(schemas.SFT) + [("response_id", pa.string()), ("n", pa.int64())])
DPO = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
    ("chosen_score", pa.float64()), ("rejected_score", pa.float64()), ("chosen_id", pa.string()),
    ("rejected_id", pa.string()), ("strategy", pa.string()),
])
DISTILL = pa.schema([
    ("response_id", pa.string()), ("prompt_id", pa.string()), ("prompt", pa.string()), ("response", pa.string()),
    ("score", pa.float64()), ("score_int", pa.int32()), ("probs", schemas.SCORE_PROBS),
])


def make_picks(con, strategy: str, seed: int, n: int) -> None:
    """``sql/select_picks.sql`` into the temp table ``picks`` that best_of_n.sql, pairs.sql and
    judge_distill.sql read: every pick in one pass over responses x judgments, texts in one scan.

    ``con`` has the views ``responses``, ``judgments`` and ``prompts``; the benchmark runs this same function.
    """
    params = {"strategy": strategy, "seed": seed, "n": n}
    text = load_sql("select_picks").strip().rstrip(";")
    con.execute(f"CREATE OR REPLACE TEMP TABLE picks AS {text}", {k: v for k, v in params.items() if f"${k}" in text})


def select_data(ctx: Context, round: int) -> None:
    recipe, store = ctx.recipe, ctx.store
    inputs = [TableRef(round, t) for t in ("prompts", "responses", "judgments")]
    seed = seed_int(recipe.seed, round, "select")
    picks = {"strategy": recipe.select.pairs, "seed": seed, "n": recipe.judge.distill_samples}
    specs = [
        ("sft", "best_of_n", SFT_BEST, {}),
        ("dpo", "pairs", DPO, {"strategy": recipe.select.pairs, "seed": seed}),
        ("judge_distill", "judge_distill", DISTILL, {"n": recipe.judge.distill_samples, "seed": seed}),
    ]
    con = None
    for table, sql_name, schema, params in specs:
        h = config_hash(recipe, "select", "judge.distill_samples", "seed", round=round)
        with ctx.stage(round, table) as info:
            if ctx.skip_if_current(info, round, table, h, inputs):
                continue
            if con is None:  # the picks of all three tables, made once
                con = store.connect(views=False)
                register_round_views(con, store, round)
                make_picks(con, **picks)
            result = run_sql(con, sql_name, **params).to_arrow_table()
            m = write_table(store, round, table, result.select(schema.names).cast(schema), config_hash=h,
                            schema=schema, inputs=inputs, sql=f"sql/select_picks.sql + sql/{sql_name}.sql",
                            params={**picks, **params})
            if table == "sft" and result.num_rows:
                top = max(result.select(["prompt", "response", "score"]).to_pylist(), key=lambda r: r["score"])
                ctx.show_example(f"best of n for a round-{round} prompt", top["prompt"], top["response"],
                                 top["score"], f"select prompt, response, score from sft where round = {round}")
            info.update(rows=m["rows"])
