"""Progress across rounds: the held-out seed prompts answered greedily by the round's model,
then scored.

The round-1 judge scores every round's answers, so the yardstick stays fixed while the
models change (the paper's Figure 2, on our data).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from alma_data import schemas
from alma_data.config import Recipe
from alma_data.engines import SamplingParams
from alma_data.prompting import render_chat, stop_strings
from alma_data.roles import round_model
from alma_data.scoring import open_judge, real_valued_score
from alma_data.stage import CheckpointRef, Context, Stage, recipe_keys
from alma_data.store import TableRef, write_table

ANSWERS = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("model", pa.string()), ("response", pa.string()),
    ("n_tokens", pa.int32()), ("finish_reason", pa.string()),
])
EVAL = pa.schema(list(ANSWERS) + [
    ("score", pa.float64()), ("score_int", pa.int32()), ("probs", schemas.SCORE_PROBS), ("judge", pa.string()),
])


ANSWER_KEYS = recipe_keys("eval", "dtype", "engine")
EVAL_KEYS = recipe_keys("judge.scale", "judge.dtype", "dtype", "engine")


def answers_stage(recipe: Recipe, round: int) -> Stage:
    """The round's model answers the held-out seed prompts greedily -> ``eval_answers``.

    A stage of its own, run as soon as the model is trained: in round 1 these are the first
    rows a trained model writes, minutes into a new build, before the judge exists."""
    model = CheckpointRef(*round_model(round))
    return Stage("held-out answers", round, "eval_answers", answer_heldout, inputs=(TableRef(1, "prompts"),),
                 keys=ANSWER_KEYS, hashed={"model": model}, params={"model": model})


def eval_stage(recipe: Recipe, round: int) -> Stage:
    """The round-1 judge scores the round's held-out answers -> ``eval``."""
    return Stage("held-out eval", round, "eval", evaluate_round, inputs=(TableRef(round, "eval_answers"),),
                 keys=EVAL_KEYS, hashed={"judge": CheckpointRef(1, "judge")})


def answer_heldout(ctx: Context, stage: Stage, h: str) -> dict:
    recipe, store, round = ctx.recipe, ctx.store, stage.round
    mr, mname = stage.params["model"].round, stage.params["model"].name
    prompts = [r for r in store.read(1, "prompts").to_pylist() if r["split"] == "eval"]
    engine = ctx.open_engine(store.checkpoint_location(mr, mname), name=mname, round=mr)
    tok = engine.tokenizer
    with ctx.progress(len(prompts), f"answering held-out prompts with {mname}", "prompt") as bar:
        out = engine.generate([render_chat(tok, p["prompt"]) for p in prompts],
                              SamplingParams(n=1, temperature=0.0, max_new_tokens=recipe.eval.max_new_tokens,
                                             stop=stop_strings(tok), seed=0), progress=bar)
    rate = f"{engine.stats.tokens_per_second:.0f} tok/s"
    engine.close()
    rows = [{"prompt_id": p["prompt_id"], "prompt": p["prompt"], "model": f"round={mr}/{mname}",
             "response": o[0].text, "n_tokens": o[0].n_tokens, "finish_reason": o[0].finish_reason}
            for p, o in zip(prompts, out)]
    m = write_table(store, round, "eval_answers", rows, config_hash=h, schema=ANSWERS, inputs=stage.inputs)
    if rows:
        show_answer(ctx, round, mname, rows)
    return {"rows": m["rows"], "rate": rate}


def show_answer(ctx: Context, round: int, mname: str, rows: list[dict]) -> None:
    """One held-out answer of the round's model: from round 2 on, one whose answer differs from
    the previous round's model's (where one does), with that answer beside it, so the screen
    shows what the round's training changed; and how many of them changed."""
    query = f"select prompt, response from eval_answers where round = {round}"
    before: dict[str, str] = {}
    if round > 1 and ctx.store.is_done(round - 1, "eval_answers"):
        before = {r["prompt_id"]: r["response"] for r in ctx.store.read(round - 1, "eval_answers").to_pylist()}
    if not before:
        ctx.show_example(f"{mname} on a held-out prompt", rows[0]["prompt"], rows[0]["response"], None, query)
        return
    prev = round_model(round - 1)[1]
    compared = [r for r in rows if r["prompt_id"] in before]
    changed = [r for r in compared if r["response"] != before[r["prompt_id"]]]
    if changed:
        pick = changed[0]
        what = f"{mname} on a held-out prompt, answer changed from {prev} ({len(changed)} of {len(compared)} changed)"
        ctx.show_example(what, pick["prompt"], pick["response"], None, query,
                         before=(prev, before[pick["prompt_id"]]))
    else:
        pick = compared[0] if compared else rows[0]
        ctx.show_example(f"{mname} on a held-out prompt, same answer as {prev} (all {len(compared)} held-out "
                         f"answers unchanged)", pick["prompt"], pick["response"], None, query)


def evaluate_round(ctx: Context, stage: Stage, h: str) -> dict:
    recipe, store, round = ctx.recipe, ctx.store, stage.round
    answers = store.read(round, "eval_answers").to_pylist()
    judge = open_judge(ctx, 1, "judge")
    with ctx.progress(len(answers), "judging held-out answers", "pair") as bar:
        probs, score, score_int = real_valued_score(judge, [a["prompt"] for a in answers],
                                                    [a["response"] for a in answers], recipe.judge.scale, bar)
    judge.close()
    rows = [{**a, "score": float(s), "score_int": int(si), "probs": pr.astype(np.float32).tolist(),
             "judge": "round=1/judge"} for a, pr, s, si in zip(answers, probs, score, score_int)]
    m = write_table(store, round, "eval", rows, config_hash=h, schema=EVAL, inputs=stage.inputs,
                    mean_score=float(np.mean(score)) if len(rows) else None)
    if rows:
        best = max(rows, key=lambda r: r["score"])
        ctx.show_example(f"the best-scored held-out answer of round {round}", best["prompt"], best["response"],
                         best["score"], f"select prompt, response, score from eval where round = {round}")
    return {"rows": m["rows"], "rate": f"mean held-out score {m['mean_score']:.3f}" if rows else ""}
