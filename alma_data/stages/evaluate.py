"""Progress across rounds: the held-out seed prompts answered greedily by the round's model,
then scored.

The round-1 judge scores every round's answers, so the yardstick stays fixed while the
models change (the paper's Figure 2, on our data).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from alma_data import schemas
from alma_data.engines import SamplingParams
from alma_data.prompting import render_chat, stop_strings
from alma_data.stages.base import Context, config_hash
from alma_data.stages.judge import open_judge, real_valued_score
from alma_data.store import TableRef, write_table

ANSWERS = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("model", pa.string()), ("response", pa.string()),
    ("n_tokens", pa.int32()), ("finish_reason", pa.string()),
])
EVAL = pa.schema(list(ANSWERS) + [
    ("score", pa.float64()), ("score_int", pa.int32()), ("probs", schemas.SCORE_PROBS), ("judge", pa.string()),
])


def round_model(round: int) -> tuple[int, str]:
    """The model a round produces: m1a in round 1 (first seed), M_r after."""
    return (1, "m1a") if round == 1 else (round, f"m{round}")


def answer_heldout(ctx: Context, round: int) -> None:
    """The round's model answers the held-out seed prompts greedily -> ``eval_answers``.

    A stage of its own, run as soon as the model is trained: in round 1 these are the first
    rows a trained model writes, minutes into a new build, before the judge exists."""
    recipe, store = ctx.recipe, ctx.store
    mr, mname = round_model(round)
    inputs = [TableRef(1, "prompts")]
    h = config_hash(recipe, "eval", "dtype", "engine", model=store.checkpoint_manifest_hash(mr, mname))
    with ctx.stage(round, "held-out answers") as info:
        if ctx.skip_if_current(info, round, "eval_answers", h, inputs):
            return
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
        m = write_table(store, round, "eval_answers", rows, config_hash=h, schema=ANSWERS, inputs=inputs)
        if rows:
            first = rows[0]
            ctx.show_example(f"{mname} on a held-out prompt", first["prompt"], first["response"], None,
                             f"select prompt, response from eval_answers where round = {round}")
        info.update(rows=m["rows"], rate=rate)


def evaluate_round(ctx: Context, round: int) -> None:
    """The round-1 judge scores the round's held-out answers -> ``eval``."""
    recipe, store = ctx.recipe, ctx.store
    inputs = [TableRef(round, "eval_answers")]
    h = config_hash(recipe, "judge.scale", "judge.dtype", "dtype", "engine",
                    judge=store.checkpoint_manifest_hash(1, "judge"))
    with ctx.stage(round, "held-out eval") as info:
        if ctx.skip_if_current(info, round, "eval", h, inputs):
            return
        answers = store.read(round, "eval_answers").to_pylist()
        judge = open_judge(ctx, 1, "judge")
        with ctx.progress(len(answers), "judging held-out answers", "pair") as bar:
            probs, score, score_int = real_valued_score(judge, [a["prompt"] for a in answers],
                                                        [a["response"] for a in answers], recipe.judge.scale, bar)
        judge.close()
        rows = [{**a, "score": float(s), "score_int": int(si), "probs": pr.astype(np.float32).tolist(),
                 "judge": "round=1/judge"} for a, pr, s, si in zip(answers, probs, score, score_int)]
        m = write_table(store, round, "eval", rows, config_hash=h, schema=EVAL, inputs=inputs,
                        mean_score=float(np.mean(score)) if len(rows) else None)
        if rows:
            best = max(rows, key=lambda r: r["score"])
            ctx.show_example(f"the best-scored held-out answer of round {round}", best["prompt"], best["response"],
                             best["score"], f"select prompt, response, score from eval where round = {round}")
        info.update(rows=m["rows"], rate=f"mean held-out score {m['mean_score']:.3f}" if rows else "")
