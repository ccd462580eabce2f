"""Selection in SQL: best-of-n -> ``sft``, preference pairs -> ``dpo``, a sample -> ``judge_distill``.

The picks of all three are made once (``sql/select_picks.sql``); each table's file formats its rows.
"""

from __future__ import annotations

import pyarrow as pa

from alma_data import schemas
from alma_data.config import Recipe
from alma_data.ids import seed_int
from alma_data.sql import load_sql, register_round_views, run_sql
from alma_data.stage import Context, Stage, recipe_keys
from alma_data.store import TableRef, write_table

SELECT_KEYS = recipe_keys("select", "judge.distill_samples", "seed")

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


# Each table's file formats its rows from the picks: (table, sql file, schema, its parameters).
TABLES = {
    "sft": ("best_of_n", SFT_BEST, lambda recipe, seed: {}),
    "dpo": ("pairs", DPO, lambda recipe, seed: {"strategy": recipe.select.pairs, "seed": seed}),
    "judge_distill": ("judge_distill", DISTILL, lambda recipe, seed: {"n": recipe.judge.distill_samples, "seed": seed}),
}


def selection_stages(recipe: Recipe, round: int) -> list[Stage]:
    inputs = tuple(TableRef(round, t) for t in ("prompts", "responses", "judgments"))
    return [Stage(table, round, table, select_table, inputs=inputs, keys=SELECT_KEYS, hashed={"round": round})
            for table in TABLES]


def _picks(ctx: Context, round: int):
    """A connection holding the round's picks: made once a build, for whichever of the three
    tables is written first."""
    recipe = ctx.recipe
    con = ctx.store.connect(views=False)
    register_round_views(con, ctx.store, round)
    make_picks(con, **_pick_params(recipe, round))
    return con


def _pick_params(recipe: Recipe, round: int) -> dict:
    return {"strategy": recipe.select.pairs, "seed": seed_int(recipe.seed, round, "select"),
            "n": recipe.judge.distill_samples}


def select_table(ctx: Context, stage: Stage, h: str) -> dict:
    recipe, store, round, table = ctx.recipe, ctx.store, stage.round, stage.output
    sql_name, schema, params_of = TABLES[table]
    picks = _pick_params(recipe, round)
    params = params_of(recipe, picks["seed"])
    con = ctx.once(("picks", round), lambda: _picks(ctx, round))
    result = run_sql(con, sql_name, **params).to_arrow_table()
    m = write_table(store, round, table, result.select(schema.names).cast(schema), config_hash=h,
                    schema=schema, inputs=stage.inputs, sql=f"sql/select_picks.sql + sql/{sql_name}.sql",
                    params={**picks, **params})
    if table == "sft" and result.num_rows:
        top = max(result.select(["prompt", "response", "score"]).to_pylist(), key=lambda r: r["score"])
        ctx.show_example(f"best of n for a round-{round} prompt", top["prompt"], top["response"],
                         top["score"], f"select prompt, response, score from sft where round = {round}")
    return {"rows": m["rows"]}
