"""The judge measured, every round it is trained: the paper's ladder (Table 2 in miniature).

Rungs: the base model as the few-shot judge (round 1, ``judge.eval_shots`` examples), the
judge fine-tuned on the seed annotations (round 1; its integer and real-valued scores are
two metrics of one rung), and the judge after self-distillation (round 2). Each is measured
on the held-out seed annotations (``judge_eval``, and ``judge_eval_base`` for the few-shot
base) and on every preference set in ``judge.eval_sets`` (``judge_sets``). ``judge_quality``
holds one row per (set, rung, metric), with a 95% bootstrap interval: over prompts on the
held-out annotations (the pairs of one prompt are not independent), over pairs on a set.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from alma_data import schemas
from alma_data.config import Recipe
from alma_data.eval_sets import read_pair_set, set_names, sets_hash
from alma_data.intervals import cluster_bootstrap, fmt, pairwise_accuracy
from alma_data.judges import Judge, open_any_judge
from alma_data.scoring import open_judge
from alma_data.sql import register_parquet, run_sql
from alma_data.stage import CheckpointRef, Context, Stage, recipe_keys, shard_count, shard_slice
from alma_data.store import TableRef, write_table

# store.shard_rows is not among them though judge_eval is sharded by it: the hash of every
# judge_eval built so far leaves it out, and adding it now would rebuild them all.
JUDGE_EVAL_KEYS = recipe_keys("judge.scale", "judge.dtype", "dtype", "engine")
LADDER_KEYS = JUDGE_EVAL_KEYS + recipe_keys("model", "store.shard_rows", "seed")
SET_KEYS = LADDER_KEYS + recipe_keys("judge.max_length", "judge.eval_split", "judge.eval_limit")
QUALITY_VERSION = 2  # judge_quality gained eval_set, rung and the interval: built ones are made again (SQL only)

BASE, FINE_TUNED, DISTILLED = "base few-shot", "fine-tuned", "self-distilled"


def rungs(recipe: Recipe, round: int) -> list[str]:
    """The ladder's rungs a round measures."""
    if round == 1:
        return ([BASE] if recipe.judge.eval_shots else []) + [FINE_TUNED]
    return [DISTILLED]


def judge_eval_stages(recipe: Recipe, round: int, judge: str = "judge") -> list[Stage]:
    checkpoint = CheckpointRef(round, judge)
    hashed = {"checkpoint": checkpoint}
    shots = recipe.judge.eval_shots if round == 1 else 0
    stages = [Stage(f"judge eval {judge}", round, "judge_eval", judge_eval, inputs=(TableRef(1, "judge_seed"),),
                    keys=JUDGE_EVAL_KEYS, hashed=hashed, params={"judge": judge})]
    quality_inputs = [TableRef(round, "judge_eval")]
    if shots:
        stages.append(Stage("judge eval base few-shot", round, "judge_eval_base", judge_eval,
                            inputs=(TableRef(1, "judge_seed"),), keys=LADDER_KEYS, hashed={"shots": shots},
                            params={"judge": "base", "shots": shots}))
        quality_inputs.append(TableRef(round, "judge_eval_base"))
    sets = recipe.judge.eval_sets
    if sets:
        set_names(sets, "judge.eval_sets")  # two sets of one name are refused before anything runs
        stages.append(Stage("judge eval sets", round, "judge_sets", judge_sets, inputs=(TableRef(1, "judge_seed"),),
                            keys=SET_KEYS, hashed={**hashed, "shots": shots, "sets": sets_hash(
                                sets, recipe.judge.eval_split, recipe.judge.eval_limit)},
                            params={"judge": judge, "shots": shots}))
        quality_inputs.append(TableRef(round, "judge_sets"))
    stages.append(Stage(f"judge quality {judge}", round, "judge_quality", judge_quality,
                        inputs=tuple(quality_inputs), keys=JUDGE_EVAL_KEYS,
                        hashed={**hashed, "version": QUALITY_VERSION}, params={"judge": judge, "shots": shots}))
    return stages


def _open(ctx: Context, round: int, judge: str, shots: int) -> Judge:
    """The base model as the few-shot judge, or a judge checkpoint of the run."""
    if judge == "base":
        return open_any_judge("base", ctx.recipe, ctx.store, shots=shots, seed=ctx.recipe.seed)
    return Judge(f"round={round}/{judge}", open_judge(ctx, round, judge), ctx.recipe.judge.scale)


def _label(judge: Judge) -> str:
    return judge.ref + (f" shots={len(judge.shots)}" if judge.shots else "")


def judge_eval(ctx: Context, stage: Stage, h: str) -> dict:
    """Score the held-out annotations with a judge checkpoint, or with the few-shot base."""
    store, recipe, round, judge = ctx.store, ctx.recipe, stage.round, stage.params["judge"]
    shots = stage.params.get("shots", 0)
    rows = store.read(1, "judge_seed").filter(pa.compute.field("heldout")).to_pylist()
    writer = store.writer(round, stage.output, config_hash=h, schema=schemas.JUDGE_EVAL, inputs=stage.inputs)
    per = recipe.store.shard_rows
    n_shards = shard_count(len(rows), per, at_least=1)
    writer.expect(n_shards)
    todo = [i for i in range(n_shards) if i not in writer.done_shards()]
    rate = ""
    name = f"base shots={shots}" if judge == "base" else judge
    if todo:
        scorer = _open(ctx, round, judge, shots)
        with ctx.progress(sum(len(shard_slice(i, per, len(rows))) for i in todo),
                          f"judging held-out annotations ({name})", "pair") as bar:
            for i in todo:
                part = [rows[j] for j in shard_slice(i, per, len(rows))]
                probs, score, score_int = scorer.score([r["prompt"] for r in part], [r["response"] for r in part], bar)
                writer.write_shard(i, [
                    {"annotation_id": r["annotation_id"], "prompt_id": r["prompt_id"], "human_score": r["score"],
                     "score": float(s), "score_int": int(si), "probs": p.astype(np.float32).tolist(), "judge": name}
                    for r, p, s, si in zip(part, probs, score, score_int)])
        rate = f"{scorer.engine.stats.scored_per_second:.2f} pairs/s"
        scorer.close()
    where = "base" if judge == "base" else store.checkpoint_location(round, judge)
    manifest = writer.finish(expected_shards=n_shards, judge_checkpoint=where)
    return {"rows": manifest["rows"], "rate": rate}


def judge_sets(ctx: Context, stage: Stage, h: str) -> dict:
    """Every rung of the round scores both sides of every pair of every ``judge.eval_sets`` set.
    A judge question over ``judge.max_length`` tokens (the length the judge is trained on) is
    not cut: its pair is left unscored, with ``too_long``, and counted in judge_quality."""
    store, recipe, round = ctx.store, ctx.recipe, stage.round
    jc, per = recipe.judge, recipe.store.shard_rows
    names = set_names(jc.eval_sets, "judge.eval_sets")
    sets = [read_pair_set(s, jc.eval_split, jc.eval_limit) for s in jc.eval_sets]
    ladder = rungs(recipe, round)
    units = [(rung, k, shard_slice(i, per, len(items))) for rung in ladder for k, items in enumerate(sets)
             for i in range(shard_count(len(items), per))]
    writer = store.writer(round, "judge_sets", config_hash=h, schema=schemas.JUDGE_SETS, inputs=stage.inputs)
    writer.expect(len(units))
    done = writer.done_shards()
    scored = skipped = 0
    rates = []
    for rung in ladder:
        todo = [i for i, u in enumerate(units) if u[0] == rung and i not in done]
        if not todo:
            continue
        scorer = _open(ctx, round, "base" if rung == BASE else stage.params["judge"], stage.params["shots"])
        with ctx.progress(sum(len(units[i][2]) for i in todo), f"judging preference sets ({_label(scorer)})",
                          "pair") as bar:
            for i in todo:
                _, k, rows = units[i]
                pairs = [sets[k][j] for j in rows]
                out = _score_pairs(scorer, pairs, jc.max_length, bar)
                scored += sum(not r["too_long"] for r in out)
                skipped += sum(r["too_long"] for r in out)
                writer.write_shard(i, [{"eval_set": names[k], "row": j, "rung": rung, "judge": _label(scorer), **r}
                                       for j, r in zip(rows, out)])
        if scorer.engine.stats.scored_per_second:
            rates.append(f"{scorer.engine.stats.scored_per_second:.2f} responses/s ({rung})")
        scorer.close()
    manifest = writer.finish(expected_shards=len(units), eval_sets=names)
    if skipped:
        ctx.log(f"  {skipped} pairs over judge.max_length={jc.max_length} tokens left unscored (counted as "
                "pairs_too_long in judge_quality; raise judge.max_length to score them)")
    return {"rows": manifest["rows"], "rate": ", ".join(rates)}


def _score_pairs(judge: Judge, pairs, max_length: int, bar) -> list[dict]:
    """Both sides of each pair; a pair with a side over ``max_length`` is left unscored whole."""
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    n = len(pairs)
    lengths = np.array([judge.length(q, r) for q, r in zip(prompts, responses)], dtype=np.int64)
    long = np.maximum(lengths[:n], lengths[n:]) > max_length
    probs, score, ints = judge.score_some(prompts, responses, ~np.concatenate([long, long]), bar)
    out = []
    for i, p in enumerate(pairs):
        row = {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
               "n_tokens_chosen": int(lengths[i]), "n_tokens_rejected": int(lengths[n + i]), "too_long": bool(long[i]),
               "score_chosen": None, "score_rejected": None, "score_int_chosen": None,
               "score_int_rejected": None, "probs_chosen": None, "probs_rejected": None}
        if not long[i]:
            row.update(score_chosen=float(score[i]), score_rejected=float(score[n + i]),
                       score_int_chosen=int(ints[i]), score_int_rejected=int(ints[n + i]),
                       probs_chosen=probs[i].astype(np.float32).tolist(),
                       probs_rejected=probs[n + i].astype(np.float32).tolist())
        out.append(row)
    return out


def judge_quality_rows(store, round: int, table: str, judge: str) -> list[dict]:
    """``sql/judge_quality.sql`` over a judge_eval table. On one DuckDB thread: with several,
    float sums add up in whatever order the threads finish, and the metrics (so the table's
    bytes and hash) changed in their last digits from one build to the next."""
    return _quality_sql(_pairs_connection(store, round, table), judge)


def _pairs_connection(store, round: int, table: str):
    con = store.connect(views=False)
    con.execute("SET threads = 1")
    register_parquet(con, "judge_eval_rows", store.files(round, table))
    run_sql(con, "judge_eval_pairs")
    return con


def _quality_sql(con, judge: str) -> list[dict]:
    return [{"judge": judge, "metric": m, "value": None if v is None else float(v), "n": int(n)}
            for m, v, n in run_sql(con, "judge_quality").fetchall()]


def _heldout_quality(store, round: int, table: str, judge: str, rung: str) -> list[dict]:
    """The held-out rows of one judge, with intervals over prompts for the two accuracies."""
    con = _pairs_connection(store, round, table)
    rows = _quality_sql(con, judge)
    pairs = con.execute("SELECT prompt_id, (real_valued = human)::INT, (integer = human)::INT FROM judge_eval_pairs "
                        "ORDER BY ALL").fetchall()
    prompt = np.array([p[0] for p in pairs])
    ci = {"pairwise_accuracy_real": cluster_bootstrap(np.array([p[1] for p in pairs]), prompt),
          "pairwise_accuracy_int": cluster_bootstrap(np.array([p[2] for p in pairs]), prompt)}
    out = []
    for r in rows:
        low, high = (ci[r["metric"]][1:] if r["metric"] in ci and pairs else (None, None))
        out.append({**r, "eval_set": "heldout", "rung": rung, "low": low, "high": high})
    return out


def _set_quality(table: pa.Table) -> list[dict]:
    """Per (set, rung): pairwise accuracy (ties wrong, ties half) of real-valued and integer
    scores with intervals over pairs, the ties, and the pairs left out as too long; the same
    figures ``alma-data judge`` prints for the set."""
    out = []
    rows = table.to_pylist()
    keys = list(dict.fromkeys((r["eval_set"], r["rung"], r["judge"]) for r in rows))
    for eval_set, rung, judge in keys:
        mine = [r for r in rows if (r["eval_set"], r["rung"], r["judge"]) == (eval_set, rung, judge)]
        ok = [r for r in mine if not r["too_long"]]

        def add(metric, value, n, low=None, high=None):
            finite = lambda x: None if x is None or not np.isfinite(x) else float(x)
            out.append({"judge": judge, "metric": metric, "value": finite(value), "n": int(n), "eval_set": eval_set,
                        "rung": rung, "low": finite(low), "high": finite(high)})

        for kind, a, b in (("real", "score_chosen", "score_rejected"), ("int", "score_int_chosen", "score_int_rejected")):
            acc = pairwise_accuracy(np.array([r[a] for r in ok], dtype=np.float64),
                                    np.array([r[b] for r in ok], dtype=np.float64))
            add(f"pairwise_accuracy_{kind}", *acc["accuracy_ties_wrong"][:1], len(ok), *acc["accuracy_ties_wrong"][1:])
            add(f"pairwise_accuracy_{kind}_ties_half", acc["accuracy_ties_half"][0], len(ok),
                *acc["accuracy_ties_half"][1:])
            add(f"ties_{kind}", acc["ties"], len(ok))
        add("pairs_too_long", len(mine) - len(ok), len(mine))
    return out


def judge_quality(ctx: Context, stage: Stage, h: str) -> dict:
    store, round, judge = ctx.store, stage.round, stage.params["judge"]
    rung = FINE_TUNED if round == 1 else DISTILLED
    quality = _heldout_quality(store, round, "judge_eval", f"round={round}/{judge}", rung)
    ties = {("heldout", rung): _heldout_ties(store, round, "judge_eval")}
    if stage.params["shots"]:
        quality += _heldout_quality(store, round, "judge_eval_base", f"base shots={stage.params['shots']}", BASE)
        ties[("heldout", BASE)] = _heldout_ties(store, round, "judge_eval_base")
    if any(ref.table == "judge_sets" for ref in stage.inputs):
        quality += _set_quality(store.read(round, "judge_sets"))
    m = write_table(store, round, "judge_quality", quality, config_hash=h, schema=schemas.JUDGE_QUALITY,
                    inputs=stage.inputs)
    for (eval_set, r) in dict.fromkeys((q["eval_set"], q["rung"]) for q in quality):
        acc = {q["metric"]: q for q in quality if (q["eval_set"], q["rung"]) == (eval_set, r)}
        if (eval_set, r) not in ties and "ties_int" in acc:
            ties[(eval_set, r)] = (acc["ties_int"]["n"], int(acc["ties_real"]["value"] or 0),
                                   int(acc["ties_int"]["value"] or 0))
        ctx.log(f"  judge quality, {eval_set}, {r}: " + ", ".join(
            f"{k.removeprefix('pairwise_accuracy_').replace('int', 'integer').replace('real', 'real-valued')} "
            f"{_ci(acc[k])}" for k in ("pairwise_accuracy_real", "pairwise_accuracy_int") if k in acc)
            + (f", {int(acc['pairs_too_long']['value'])} pairs too long" if acc.get("pairs_too_long", {}).get("value")
               else "")
            + _ties_words(*ties.get((eval_set, r), (None, 0, 0))))
    return {"rows": m["rows"]}


def _heldout_ties(store, round: int, table: str) -> tuple[int, int, int]:
    """(pairs, pairs whose real-valued scores tie, pairs whose integer scores tie) of a
    judge_eval table: what its accuracies count as wrong."""
    con = _pairs_connection(store, round, table)
    n, real, integer = con.execute("SELECT count(*), count(*) FILTER (real_valued = 0), count(*) FILTER (integer = 0) "
                                   "FROM judge_eval_pairs").fetchone()
    return int(n), int(real), int(integer)


def _ties_words(pairs: int | None, real: int, integer: int) -> str:
    """``\n    pairwise accuracy over 24 pairs, a tie counting as wrong (24 tied on integer scores, none on
    real-valued)``: a line of its own under the accuracies, so both fit a terminal's width."""
    if pairs is None:
        return ""
    if not (real or integer):
        return f"\n    pairwise accuracy over {pairs} pairs (no ties)"
    both = (f"{integer} tied on integer scores, {real or 'none'} on real-valued" if integer
            else f"{real} tied on real-valued scores, none on integer")
    return f"\n    pairwise accuracy over {pairs} pairs, a tie counting as wrong ({both})"


def _ci(q: dict) -> str:
    nan = float("nan")
    return fmt((nan if q["value"] is None else q["value"], nan if q["low"] is None else q["low"],
                nan if q["high"] is None else q["high"]))
