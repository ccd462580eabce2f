"""``alma-data judge``: score a user's file with any judge; for preference pairs, how often
the judge agrees with the people who labelled them.

    alma-data judge FILE|DIR|HUB_ID judge=REF [shots=K] [run=NAME] [runs_dir=DIR] [split=test] [subset=CONFIG]
                    [limit=N] [long=skip|score] [seed=0] [KEY=VALUE ...] [--out scores.parquet]

Recipe keys (``engine=vllm``, ``judge.max_length=1024``, ``judge.batch_size_score=4``) apply to
the run's recipe, or to ``recipe=NAME`` (default: default) when no run is named.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from alma_data import schemas
from alma_data.config import RecipeError, apply_override, load_recipe, recipe_from_dict
from alma_data.intervals import fmt, pairwise_accuracy
from alma_data.judges import Judge, open_any_judge
from alma_data.store import Store, list_runs
from alma_data.user_data import read_judge_input

SPECIAL = {"judge", "shots", "run", "runs_dir", "recipe", "split", "subset", "limit", "long", "seed"}

SINGLE = pa.schema([
    ("row", pa.int64()), ("prompt", pa.string()), ("response", pa.string()), ("n_tokens", pa.int32()),
    ("too_long", pa.bool_()), ("score", pa.float64()), ("score_int", pa.int32()), ("probs", schemas.SCORE_PROBS),
    ("judge", pa.string()),
])
PAIRS = pa.schema([
    ("row", pa.int64()), ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
    ("n_tokens_chosen", pa.int32()), ("n_tokens_rejected", pa.int32()), ("too_long", pa.bool_()),
    ("score_chosen", pa.float64()), ("score_rejected", pa.float64()),
    ("score_int_chosen", pa.int32()), ("score_int_rejected", pa.int32()),
    ("probs_chosen", schemas.SCORE_PROBS), ("probs_rejected", schemas.SCORE_PROBS), ("judge", pa.string()),
])


# The bounds of the whole numbers judge and eval take on their command line.
INT_BOUNDS = {"shots": (0, 64), "limit": (0, 10_000_000), "seed": (0, 2**32 - 1), "max_new_tokens": (1, 1_000_000)}


def _int(special: dict[str, str], key: str, default: int) -> int:
    try:
        value = int(special.get(key, default))
    except ValueError:
        raise RecipeError(f"{key} must be a whole number, got {special[key]!r}") from None
    low, high = INT_BOUNDS.get(key, (None, None))
    if low is not None and not low <= value <= high:
        raise RecipeError(f"{key}={value} is out of range: give a whole number from {low} to {high:,}")
    return value


def recipe_and_store(special: dict[str, str], overrides: dict[str, str], default_runs_dir: str):
    """The recipe (the run's own when the run exists) and the run's store (None: no run).
    A judge ``run:NAME/...`` names the run when ``run=`` does not."""
    from alma_data.models import _RUN_REF

    runs_dir = special.get("runs_dir", default_runs_dir)
    run = special.get("run")
    m = _RUN_REF.match(special.get("judge", ""))
    if run is None and m and m.group("run"):
        run = m.group("run")
    if run is None and "://" not in runs_dir and Path(runs_dir).is_dir():
        runs = list_runs(runs_dir)
        run = runs[0] if len(runs) == 1 else ("default" if "default" in runs else None)
    store = Store(runs_dir, run) if run else None
    if store is not None and store.exists() and "recipe" not in special:
        recipe = recipe_from_dict(store.read_run()["recipe"])
        for key, value in overrides.items():
            apply_override(recipe, key, value)
    else:
        if special.get("run") and (store is None or not store.exists()):
            raise RecipeError(f"run={special['run']}: no such run in {runs_dir}; name a built run or leave run= out")
        recipe = load_recipe(special.get("recipe", "default"), overrides)
    return recipe, store


def score_items(judge: Judge, prompts: list[str], responses: list[str], max_length: int, long: str, *,
                desc: str, quiet: bool = False):
    """Scores of every (prompt, response); those over ``max_length`` are left unscored (NaN)
    unless ``long=score``. Returns (lengths, too_long, probs, scores, integer scores, seconds)."""
    from tqdm.auto import tqdm

    n = len(prompts)
    lengths = np.array([judge.length(p, r) for p, r in zip(prompts, responses)], dtype=np.int64)
    too_long = lengths > max_length
    keep = ~too_long if long == "skip" else np.ones(n, dtype=bool)
    t0 = time.time()
    with tqdm(total=int(keep.sum()), desc=desc, unit="response", disable=quiet or not keep.any(),
              dynamic_ncols=True) as bar:
        probs, scores, ints = judge.score_some(prompts, responses, keep, bar)
    return lengths, too_long, probs, scores, ints, time.time() - t0


def _opt(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _probs(row: np.ndarray) -> list[float] | None:
    return None if np.isnan(row).any() else row.astype(np.float32).tolist()


def cmd_judge(args, split_assignments, default_runs_dir: str) -> int:
    special, overrides, rest = split_assignments(args.assignments, SPECIAL)
    if len(rest) != 1:
        raise RecipeError("judge takes one file, dataset folder or Hub dataset id to score: "
                          "alma-data judge pairs.jsonl judge=run:default/round=1/judge")
    if "judge" not in special:
        raise RecipeError("say which judge scores: judge=run:NAME/round=R/judge, judge=base shots=3, "
                          "a model folder or a Hub model id")
    long = special.get("long", "skip")
    if long not in ("skip", "score"):
        raise RecipeError(f"long must be skip or score, got {long!r}")
    shots = _int(special, "shots", 3 if special["judge"] == "base" else 0)
    source = rest[0]
    kind, items = read_judge_input(source, special.get("split", "test"), _int(special, "limit", 0),
                                   special.get("subset"))
    recipe, store = recipe_and_store(special, overrides, default_runs_dir)
    if args.out:  # refused before any scoring, not after it
        from alma_data.outputs import check_output

        args.out = check_output(args.out, flag="--out", runs_dir=store.runs_dir if store is not None else default_runs_dir)
    t0 = time.time()
    judge = open_any_judge(special["judge"], recipe, store, shots=shots, seed=_int(special, "seed", 0))
    label = special["judge"] + (f" shots={shots}" if shots else "")
    max_length = recipe.judge.max_length
    if kind == "single":
        prompts, responses = [i.prompt for i in items], [i.response for i in items]
    else:
        prompts = [i.prompt for i in items] * 2
        responses = [i.chosen for i in items] + [i.rejected for i in items]
    lengths, too_long, probs, scores, ints, seconds = score_items(
        judge, prompts, responses, max_length, long, desc=f"judging with {label}", quiet=args.quiet)
    judge.close()
    scored = int(np.isfinite(scores).sum())
    summary: dict = {"source": source, "judge": label, "kind": kind, "rows": len(items),
                     "responses_scored": scored, "too_long": int(too_long.sum()), "max_length": max_length,
                     "long": long, "seconds": round(time.time() - t0, 2),
                     "responses_per_second": round(scored / seconds, 3) if seconds else None}
    if kind == "single":
        rows = [{"row": i, "prompt": p, "response": r, "n_tokens": int(n), "too_long": bool(tl), "score": _opt(s),
                 "score_int": int(si) if si >= 0 else None, "probs": _probs(pr), "judge": label}
                for i, (p, r, n, tl, s, si, pr) in enumerate(zip(prompts, responses, lengths, too_long, scores, ints, probs))]
        schema = SINGLE
        ok = np.isfinite(scores)
        summary["mean_score"] = _opt(float(scores[ok].mean())) if ok.any() else None
    else:
        k = len(items)
        pair_long = too_long[:k] | too_long[k:]
        rows = [{"row": i, "prompt": it.prompt, "chosen": it.chosen, "rejected": it.rejected,
                 "n_tokens_chosen": int(lengths[i]), "n_tokens_rejected": int(lengths[k + i]),
                 "too_long": bool(pair_long[i]), "score_chosen": _opt(scores[i]), "score_rejected": _opt(scores[k + i]),
                 "score_int_chosen": int(ints[i]) if ints[i] >= 0 else None,
                 "score_int_rejected": int(ints[k + i]) if ints[k + i] >= 0 else None,
                 "probs_chosen": _probs(probs[i]), "probs_rejected": _probs(probs[k + i]), "judge": label}
                for i, it in enumerate(items)]
        schema = PAIRS
        ok = np.isfinite(scores[:k]) & np.isfinite(scores[k:])
        summary["pairs_too_long"] = int(pair_long.sum())
        summary["pairs_measured"] = int(ok.sum())
        summary["real_valued"] = pairwise_accuracy(scores[:k][ok], scores[k:][ok])
        summary["integer"] = pairwise_accuracy(ints[:k][ok], ints[k:][ok])
    if args.out:
        import pyarrow.parquet as pq

        from alma_data.outputs import atomic_path

        with atomic_path(args.out) as tmp:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(tmp), compression="zstd")
        summary["out"] = str(args.out)
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    what = f"{len(items):,} pairs ({scored:,} responses)" if kind == "pairs" else f"{scored:,} responses"
    long_note = (f"; {int(too_long.sum())} over judge.max_length={max_length} "
                 + ("left out" if long == "skip" else "scored in full anyway")) if too_long.any() else ""
    rate = f"{summary['responses_per_second']:.2f} responses/s" if summary["responses_per_second"] else "-"
    print(f"alma-data judge: {what} scored with {label} in {summary['seconds']:.1f}s, {rate}{long_note}"
          + (f"; scores in {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def format_summary(s: dict) -> str:
    lines = [f"{s['source']}: {s['rows']:,} {'pairs' if s['kind'] == 'pairs' else 'responses'} judged by {s['judge']}"]
    if s["too_long"]:
        lines.append(f"  {s['too_long']} responses over judge.max_length={s['max_length']} tokens "
                     + ("(left out: raise judge.max_length=N, or long=score to score them in full)"
                        if s["long"] == "skip" else "(scored in full, beyond the length the judge was trained on)"))
    if s["kind"] == "single":
        lines.append(f"  mean score {s['mean_score']:.3f}" if s.get("mean_score") is not None else "  nothing scored")
        return "\n".join(lines)
    lines.append(f"  pairs measured: {s['pairs_measured']:,}"
                 + (f" ({s['pairs_too_long']} with a response over the limit left out)" if s["pairs_too_long"] else ""))
    lines.append(f"  {'scores':<12} {'accuracy, ties wrong':<26} {'accuracy, ties half':<26} ties")
    for key, name in (("real_valued", "real-valued"), ("integer", "integer")):
        a = s[key]
        lines.append(f"  {name:<12} {fmt(a['accuracy_ties_wrong']):<26} {fmt(a['accuracy_ties_half']):<26} "
                     f"{a['ties']} ({a['ties'] / max(a['pairs'], 1):.0%})")
    lines.append("  [95% bootstrap intervals over pairs]")
    return "\n".join(lines)
