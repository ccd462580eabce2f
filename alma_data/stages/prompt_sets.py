"""Every round's model on the prompt sets of ``eval.prompt_sets`` (the paper's Figure 2 on
sets the user chose): answered greedily, scored by the round-1 judge held fixed across
rounds, summed up with intervals.

- ``prompt_set_answers``: round 1 answers with the base model and m1a, round r with M_r;
- ``prompt_set_eval``: those answers with the round-1 judge's scores;
- ``prompt_set_summary``: per set, the mean score of each checkpoint (base, m1a and the
  round's model), per category, and the round's model against base and m1a: paired win
  rate and the comparison at equal answer length (what ``alma-data eval`` prints).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from alma_data import schemas
from alma_data.config import Recipe
from alma_data.engines import SamplingParams
from alma_data.eval_sets import read_prompt_set, set_names, sets_hash
from alma_data.models import resolve
from alma_data.prompting import render_chat, stop_strings
from alma_data.roles import round_model
from alma_data.scoring import open_judge, real_valued_score
from alma_data.stage import CheckpointRef, Context, Stage, recipe_keys, shard_count, shard_slice
from alma_data.store import TableRef
from alma_data.user_eval import USER_EVAL_SUMMARY, summarise

ANSWERS = pa.schema([
    ("eval_set", pa.string()), ("prompt_id", pa.string()), ("category", pa.string()), ("prompt", pa.string()),
    ("checkpoint", pa.string()), ("response", pa.string()), ("n_tokens", pa.int32()), ("finish_reason", pa.string()),
])
EVAL = pa.schema(list(ANSWERS) + [
    ("score", pa.float64()), ("score_int", pa.int32()), ("probs", schemas.SCORE_PROBS), ("judge", pa.string()),
])
KEYS = recipe_keys("model", "eval.max_new_tokens", "eval.prompt_split", "eval.prompt_limit", "dtype", "engine",
                   "store.shard_rows")
SCORE_KEYS = recipe_keys("judge.scale", "judge.dtype", "dtype", "engine", "store.shard_rows")
JUDGE = "round=1/judge"


def checkpoints(round: int) -> list[tuple[str, CheckpointRef | None]]:
    """(label, checkpoint) answering in this round: base and m1a in round 1, M_r after."""
    if round == 1:
        return [("base", None), ("m1a", CheckpointRef(1, "m1a"))]
    r, name = round_model(round)
    return [(name, CheckpointRef(r, name))]


def prompt_set_stages(recipe: Recipe, round: int) -> list[Stage]:
    sets = recipe.eval.prompt_sets
    if not sets:
        return []
    set_names(sets, "eval.prompt_sets")
    hashed = {"sets": sets_hash(sets, recipe.eval.prompt_split, recipe.eval.prompt_limit),
              "models": {label: ref for label, ref in checkpoints(round) if ref is not None}}
    answers = Stage("prompt set answers", round, "prompt_set_answers", answer_sets, keys=KEYS, hashed=hashed)
    scored = Stage("prompt set eval", round, "prompt_set_eval", score_sets,
                   inputs=(TableRef(round, "prompt_set_answers"),), keys=SCORE_KEYS,
                   hashed={"judge": CheckpointRef(1, "judge")})
    summary_inputs = ((TableRef(1, "prompt_set_eval"),) if round > 1 else ()) + (TableRef(round, "prompt_set_eval"),)
    summary = Stage("prompt set summary", round, "prompt_set_summary", summarise_sets, inputs=summary_inputs,
                    keys=recipe_keys("eval.prompt_sets"))
    return [answers, scored, summary]


def _units(ctx: Context, round: int):
    """(label, checkpoint, set index, rows) per shard, and the sets' names and prompts."""
    ec, per = ctx.recipe.eval, ctx.recipe.store.shard_rows
    names = set_names(ec.prompt_sets, "eval.prompt_sets")
    sets = [read_prompt_set(s, ec.prompt_split, ec.prompt_limit) for s in ec.prompt_sets]
    units = [(label, ref, k, shard_slice(i, per, len(p))) for label, ref in checkpoints(round)
             for k, p in enumerate(sets) for i in range(shard_count(len(p), per))]
    return units, names, sets


def answer_sets(ctx: Context, stage: Stage, h: str) -> dict:
    store, recipe, round = ctx.store, ctx.recipe, stage.round
    units, names, sets = _units(ctx, round)
    writer = store.writer(round, stage.output, config_hash=h, schema=ANSWERS, inputs=stage.inputs)
    writer.expect(len(units))
    done = writer.done_shards()
    rates = []
    for label, ref in checkpoints(round):
        todo = [i for i, u in enumerate(units) if u[0] == label and i not in done]
        if not todo:
            continue
        if ref is None:
            engine = ctx.open_engine(resolve(recipe.model))
        else:
            engine = ctx.open_engine(store.checkpoint_location(ref.round, ref.name), name=ref.name, round=ref.round)
        tok = engine.tokenizer
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=recipe.eval.max_new_tokens,
                                stop=stop_strings(tok), seed=0)
        with ctx.progress(sum(len(units[i][3]) for i in todo), f"answering prompt sets with {label}", "prompt") as bar:
            for i in todo:
                _, _, k, rows = units[i]
                prompts = [sets[k][j] for j in rows]
                out = engine.generate([render_chat(tok, p.prompt) for p in prompts], params, progress=bar)
                writer.write_shard(i, [{"eval_set": names[k], "prompt_id": p.prompt_id, "category": p.category,
                                        "prompt": p.prompt, "checkpoint": label, "response": o[0].text,
                                        "n_tokens": o[0].n_tokens, "finish_reason": o[0].finish_reason}
                                       for p, o in zip(prompts, out)])
        rates.append(f"{label} {engine.stats.tokens_per_second:.0f} tok/s")
        engine.close()
    manifest = writer.finish(expected_shards=len(units), eval_sets=names)
    return {"rows": manifest["rows"], "rate": ", ".join(rates)}


def score_sets(ctx: Context, stage: Stage, h: str) -> dict:
    """The round-1 judge scores the answers, shard for shard; a judge question over
    judge.max_length is scored in full (the answer is the model's; leaving it out would
    favour models that ramble), its length kept in the answers' n_tokens."""
    store, recipe, round = ctx.store, ctx.recipe, stage.round
    answers = store.read(round, "prompt_set_answers").to_pylist()
    per = recipe.store.shard_rows
    n_shards = shard_count(len(answers), per, at_least=1)
    writer = store.writer(round, stage.output, config_hash=h, schema=EVAL, inputs=stage.inputs)
    writer.expect(n_shards)
    todo = [i for i in range(n_shards) if i not in writer.done_shards()]
    rate = ""
    if todo:
        judge = open_judge(ctx, 1, "judge")
        with ctx.progress(sum(len(shard_slice(i, per, len(answers))) for i in todo), "judging prompt-set answers",
                          "answer") as bar:
            for i in todo:
                part = [answers[j] for j in shard_slice(i, per, len(answers))]
                probs, score, ints = real_valued_score(judge, [a["prompt"] for a in part],
                                                       [a["response"] for a in part], recipe.judge.scale, bar)
                writer.write_shard(i, [{**a, "score": float(s), "score_int": int(si),
                                        "probs": p.astype(np.float32).tolist(), "judge": JUDGE}
                                       for a, p, s, si in zip(part, probs, score, ints)])
        rate = f"{judge.stats.scored_per_second:.2f} answers/s"
        judge.close()
    manifest = writer.finish(expected_shards=n_shards)
    return {"rows": manifest["rows"], "rate": rate}


def summarise_sets(ctx: Context, stage: Stage, h: str) -> dict:
    from alma_data.store import write_table
    from alma_data.user_data import EvalPrompt

    store, round = ctx.store, stage.round
    rows = [r for ref in stage.inputs for r in store.read(ref.round, ref.table).to_pylist()]
    labels = ["base", "m1a"] + ([round_model(round)[1]] if round > 1 else [])
    out: list[dict] = []
    for eval_set in dict.fromkeys(r["eval_set"] for r in rows):
        mine = [r for r in rows if r["eval_set"] == eval_set]
        by = {label: {r["prompt_id"]: r for r in mine if r["checkpoint"] == label} for label in labels}
        ids = [pid for pid in by[labels[0]] if all(pid in by[label] for label in labels)]
        prompts = [EvalPrompt(pid, by[labels[0]][pid]["prompt"], by[labels[0]][pid]["category"]) for pid in ids]
        scores = {label: np.array([by[label][pid]["score"] for pid in ids]) for label in labels}
        lengths = {label: np.array([by[label][pid]["n_tokens"] for pid in ids]) for label in labels}
        finish = {label: [by[label][pid]["finish_reason"] for pid in ids] for label in labels}
        out += summarise(eval_set, JUDGE, labels, prompts, scores, lengths, finish)
        means = {q["checkpoint"]: q for q in out if q["eval_set"] == eval_set and q["metric"] == "mean_score"}
        ctx.log(f"  prompt set {eval_set} ({len(ids)} prompts), mean score by the round-1 judge: " + ", ".join(
            f"{label} {means[label]['value']:.2f} [{means[label]['low']:.2f}, {means[label]['high']:.2f}]"
            for label in labels if means.get(label, {}).get("low") is not None))
    m = write_table(store, round, stage.output, out, config_hash=h, schema=USER_EVAL_SUMMARY, inputs=stage.inputs)
    return {"rows": m["rows"]}
