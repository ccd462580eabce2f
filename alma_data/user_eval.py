"""``alma-data eval``: a user's prompts answered greedily by checkpoints of a run, scored by
one judge held fixed (the run's round-1 judge by default, so rounds compare).

    alma-data eval PROMPTS run=NAME [models=base,m1a,last] [judge=run:round=1/judge] [shots=K]
                   [name=SET] [split=test] [subset=CONFIG] [limit=N] [max_new_tokens=N] [KEY=VALUE ...]

Writes two tables into the run's last round, ``user_eval`` (every answer with its score)
and ``user_eval_summary`` (one row per figure, with its 95% interval), replacing earlier
rows of the same ``name`` and keeping other sets': ``alma-data query`` and the report read
them. LLM judges favour longer answers, so the comparison of the last model with the others
is also given at equal length (intervals.length_controlled).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pyarrow as pa

from alma_data import schemas
from alma_data.config import RecipeError, fingerprint
from alma_data.engines import SamplingParams
from alma_data.errors import AlmaError
from alma_data.intervals import bootstrap, fmt, length_controlled, pair_outcomes
from alma_data.judge_cli import _int, recipe_and_store, score_items
from alma_data.judges import open_any_judge
from alma_data.models import resolve
from alma_data.prompting import render_chat, stop_strings
from alma_data.store import write_table
from alma_data.user_data import read_eval_prompts

SPECIAL = {"run", "runs_dir", "models", "judge", "shots", "name", "split", "subset", "limit", "max_new_tokens", "seed"}

USER_EVAL = pa.schema([
    ("eval_set", pa.string()), ("prompt_id", pa.string()), ("category", pa.string()), ("prompt", pa.string()),
    ("checkpoint", pa.string()), ("response", pa.string()), ("n_tokens", pa.int32()), ("finish_reason", pa.string()),
    ("judge_tokens", pa.int32()), ("score", pa.float64()), ("score_int", pa.int32()), ("probs", schemas.SCORE_PROBS),
    ("judge", pa.string()),
])
USER_EVAL_SUMMARY = pa.schema([
    ("eval_set", pa.string()), ("metric", pa.string()), ("checkpoint", pa.string()), ("versus", pa.string()),
    ("category", pa.string()), ("value", pa.float64()), ("low", pa.float64()), ("high", pa.float64()),
    ("n", pa.int64()), ("judge", pa.string()),
])


class EvalError(AlmaError, ValueError):
    pass


def last_model(store) -> tuple[int, str]:
    """The newest round's model: m{R} of the highest round that has one, else m1a."""
    for r in sorted(store.rounds_present(), reverse=True):
        if r >= 2 and store.checkpoint_done(r, f"m{r}"):
            return r, f"m{r}"
    return 1, "m1a"


def pick_checkpoints(store, spec: str) -> list[tuple[str, int | None, str]]:
    """(label, round, name) for ``models=`` items: ``base``, ``last``, ``m1a``, ``round=2/m2``."""
    out: list[tuple[str, int | None, str]] = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item == "base":
            entry = ("base", None, "base")
        elif item == "last":
            r, name = last_model(store)
            entry = (name, r, name)
        elif item.startswith("round="):
            try:
                r_text, name = item.removeprefix("round=").split("/", 1)
                r = int(r_text)
            except ValueError:
                raise RecipeError(f"models: {item!r} is not round=R/NAME") from None
            if not store.checkpoint_done(r, name):
                raise EvalError(f"models: run {store.run!r} has no checkpoint {item!r}; use base, last, or one of "
                                f"{', '.join(_checkpoints(store)) or 'its checkpoints (none built yet)'}")
            entry = (name if not any(o[2] == name for o in out) else f"round={r}/{name}", r, name)
        else:
            rounds = [r for r in sorted(store.rounds_present(), reverse=True) if store.checkpoint_done(r, item)]
            if not rounds:
                raise EvalError(f"models: run {store.run!r} has no checkpoint {item!r}; use base, last, or one of "
                                f"{', '.join(_checkpoints(store)) or 'its checkpoints (none built yet)'}")
            entry = (item, rounds[0], item)
        if entry[0] not in [o[0] for o in out]:
            out.append(entry)
    if not out:
        raise RecipeError("models= names no checkpoint; e.g. models=base,m1a,last")
    return out


def _checkpoints(store) -> list[str]:
    names = []
    for r in store.rounds_present():
        for name in ("m1a", "m1b", f"m{r}"):
            if store.checkpoint_done(r, name) and name not in names:
                names.append(name)
    return names


def answer(recipe, store, path: str, name: str, round_: int | None, prompts: list[str], max_new_tokens: int,
           quiet: bool):
    from tqdm.auto import tqdm

    from alma_data.engines import open_engine

    engine = open_engine(recipe, path, name=name, round=round_, cache_dir=store.local_root / "_cache" / "engine")
    tok = engine.tokenizer
    with tqdm(total=len(prompts), desc=f"answering with {name}", unit="prompt", disable=quiet, dynamic_ncols=True) as bar:
        out = engine.generate([render_chat(tok, p) for p in prompts],
                              SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop=stop_strings(tok),
                                             seed=0), progress=bar)
    rate = engine.stats.tokens_per_second
    engine.close()
    return [o[0] for o in out], rate


def summarise(eval_set: str, judge: str, labels: list[str], prompts, scores: dict, lengths: dict,
              finish: dict) -> list[dict]:
    rows: list[dict] = []

    def add(metric, checkpoint, value, low=None, high=None, n=0, versus=None, category=None):
        rows.append({"eval_set": eval_set, "metric": metric, "checkpoint": checkpoint, "versus": versus,
                     "category": category, "value": None if value is None or not np.isfinite(value) else float(value),
                     "low": None if low is None or not np.isfinite(low) else float(low),
                     "high": None if high is None or not np.isfinite(high) else float(high), "n": int(n), "judge": judge})

    cats = sorted({p.category for p in prompts})
    for label in labels:
        s = scores[label]
        add("mean_score", label, *bootstrap(s), n=len(s))
        add("mean_tokens", label, *bootstrap(lengths[label].astype(np.float64)), n=len(s))
        add("share_cut_at_max_tokens", label, float(np.mean([f == "length" for f in finish[label]])), n=len(s))
        for c in cats:
            mask = np.array([p.category == c for p in prompts])
            add("category_mean_score", label, *bootstrap(s[mask]), n=int(mask.sum()), category=c)
    last = labels[-1]
    for other in labels[:-1]:
        add("win_rate", last, *bootstrap(pair_outcomes(scores[last], scores[other])), n=len(prompts), versus=other)
        lc = length_controlled(scores[last], scores[other], lengths[last], lengths[other])
        for key in ("score_difference", "difference_at_equal_length", "win_rate_at_equal_length",
                    "slope_per_100_tokens"):
            add(key, last, *lc[key], n=len(prompts), versus=other)
        add("mean_length_difference", last, lc["mean_length_difference"], n=len(prompts), versus=other)
        add("length_share", last, lc["length_share"], n=len(prompts), versus=other)
    return rows


def format_summary(rows: list[dict], labels: list[str], eval_set: str, judge: str, n: int) -> str:
    get = {(r["metric"], r["checkpoint"], r["versus"], r["category"]): r for r in rows}

    def ci(metric, cp, versus=None, category=None, digits=3):
        r = get.get((metric, cp, versus, category))
        if r is None or r["value"] is None:
            return "n/a"
        return fmt((r["value"], r["low"] if r["low"] is not None else float("nan"),
                    r["high"] if r["high"] is not None else float("nan")), digits)

    lines = [f"eval set {eval_set!r}: {n} prompts, judged by {judge}",
             f"  {'checkpoint':<12} {'mean score [95%]':<28} {'mean tokens':<24} cut at max_new_tokens"]
    for cp in labels:
        cut = get[("share_cut_at_max_tokens", cp, None, None)]["value"]
        lines.append(f"  {cp:<12} {ci('mean_score', cp):<28} {ci('mean_tokens', cp, digits=1):<24} {cut:.0%}")
    cats = sorted({r["category"] for r in rows if r["category"]})
    if len(cats) > 1:
        lines.append("  per category (mean score): " + "; ".join(
            f"{c}: " + ", ".join(f"{cp} {ci('category_mean_score', cp, category=c, digits=2)}" for cp in labels)
            for c in cats))
    last = labels[-1]
    for other in labels[:-1]:
        share = get[("length_share", last, other, None)]["value"]
        dlen = get[("mean_length_difference", last, other, None)]["value"]
        lines.append(f"  {last} vs {other}: win rate {ci('win_rate', last, other)} (ties half); score difference "
                     f"{ci('score_difference', last, other)}")
        lines.append(f"    at equal length: difference {ci('difference_at_equal_length', last, other)}, win rate "
                     f"{ci('win_rate_at_equal_length', last, other)}; {ci('slope_per_100_tokens', last, other)} "
                     f"per 100 tokens longer; {last} answers {dlen:+.1f} tokens longer on average"
                     + (f"; length accounts for {share:.0%} of the difference" if share is not None else ""))
    lines.append("  [95% bootstrap intervals over prompts]")
    return "\n".join(lines)


def cmd_eval(args, split_assignments, default_runs_dir: str) -> int:
    special, overrides, rest = split_assignments(args.assignments, SPECIAL)
    if len(rest) != 1:
        raise RecipeError("eval takes one prompt file, dataset folder or Hub dataset id: "
                          "alma-data eval prompts.jsonl run=default")
    special.setdefault("judge", "run:round=1/judge")
    recipe, store = recipe_and_store(special, overrides, default_runs_dir)
    if store is None or not store.exists():
        raise EvalError("eval answers with the checkpoints of a run: name a built run with run=NAME (and runs_dir=DIR)")
    source = rest[0]
    prompts = read_eval_prompts(source, special.get("split", "test"), _int(special, "limit", 0), special.get("subset"))
    eval_set = special.get("name") or source.rstrip("/").split("/")[-1].rsplit(".", 1)[0]
    picked = pick_checkpoints(store, special.get("models", "base,m1a,last"))
    if len(picked) < 2:
        raise RecipeError("models= needs two checkpoints or more to compare, e.g. models=base,m1a,last")
    max_new = _int(special, "max_new_tokens", recipe.eval.max_new_tokens)
    shots = _int(special, "shots", 3 if special["judge"] == "base" else 0)
    judge_label = special["judge"] + (f" shots={shots}" if shots else "")
    t0 = time.time()
    # Open the judge first: a judge that does not exist stops the command before any answering.
    judge = open_any_judge(special["judge"], recipe, store, shots=shots, seed=_int(special, "seed", 0))
    judge.close()
    from alma_data.store.integrity import require_checkpoint_hashed

    for _, r, name in picked:  # every file's sha256 before any checkpoint answers
        if r is not None:
            require_checkpoint_hashed(store, r, name)
    texts = [p.prompt for p in prompts]
    answers, labels = {}, []
    for label, r, name in picked:
        path = resolve(recipe.model) if r is None else store.checkpoint_location(r, name)
        answers[label], rate = answer(recipe, store, path, name, r, texts, max_new, args.quiet)
        labels.append(label)
        if not args.quiet:
            print(f"  {label}: {len(texts)} answers, {rate:.0f} tokens/s", file=sys.stderr)
    judge = open_any_judge(special["judge"], recipe, store, shots=shots, seed=_int(special, "seed", 0))
    all_prompts = [t for _ in labels for t in texts]
    all_answers = [a.text for label in labels for a in answers[label]]
    jlen, too_long, probs, score, ints, seconds = score_items(
        judge, all_prompts, all_answers, recipe.judge.max_length, "score", desc=f"judging with {judge_label}",
        quiet=args.quiet)
    judge.close()
    n = len(prompts)
    scores = {label: score[k * n:(k + 1) * n] for k, label in enumerate(labels)}
    lengths = {label: np.array([a.n_tokens for a in answers[label]]) for label in labels}
    finish = {label: [a.finish_reason for a in answers[label]] for label in labels}
    rows = [{"eval_set": eval_set, "prompt_id": p.prompt_id, "category": p.category, "prompt": p.prompt,
             "checkpoint": label, "response": a.text, "n_tokens": a.n_tokens, "finish_reason": a.finish_reason,
             "judge_tokens": int(jlen[k * n + i]), "score": float(score[k * n + i]), "score_int": int(ints[k * n + i]),
             "probs": probs[k * n + i].astype(np.float32).tolist(), "judge": judge_label}
            for k, label in enumerate(labels) for i, (p, a) in enumerate(zip(prompts, answers[label]))]
    summary = summarise(eval_set, judge_label, labels, prompts, scores, lengths, finish)
    round_ = max(store.rounds_present())
    h = fingerprint({"eval_set": eval_set, "source": source, "checkpoints": picked, "judge": judge_label,
                     "max_new_tokens": max_new,
                     "models": [store.checkpoint_manifest_hash(r, nm) for _, r, nm in picked if r is not None]})
    for table, new, schema in (("user_eval", rows, USER_EVAL), ("user_eval_summary", summary, USER_EVAL_SUMMARY)):
        keep = []
        if store.is_done(round_, table):
            old = store.read(round_, table)
            keep = [r for r in old.to_pylist() if r["eval_set"] != eval_set]
        write_table(store, round_, table, keep + new, config_hash=fingerprint([h, len(keep)]), schema=schema,
                    eval_sets=sorted({r["eval_set"] for r in keep + new}))
    print(format_summary(summary, labels, eval_set, judge_label, n))
    over = int(too_long.sum())
    print(f"alma-data eval: {n} prompts x {len(labels)} checkpoints answered and judged in {time.time() - t0:.1f}s "
          f"(judge {len(all_answers) / max(seconds, 1e-9):.2f} answers/s)"
          + (f"; {over} judge questions over judge.max_length={recipe.judge.max_length}, scored in full" if over else "")
          + f"; tables user_eval and user_eval_summary in round {round_}: alma-data query {store.cli_args()} "
          f"\"select * from user_eval_summary where eval_set = '{eval_set}'\"", file=sys.stderr)
    return 0
