"""The lab's measurements: the oracle's figures for every comparison, with intervals over seeds.

Reads the finished runs (never writes them). Per seed it computes each figure; the table
gives the mean over seeds with a percentile bootstrap interval over seeds
(:func:`alma_data.intervals.bootstrap`) and, for a comparison, the same for the per-seed
difference, from which the verdict is read: *held* when the whole interval of the difference
is on the paper's side of zero, *did not* when it is wholly on the other, else *could not be
told apart*.
"""

from __future__ import annotations

import random
from math import comb
from pathlib import Path

import numpy as np

from alma_data import intervals
from alma_data.config import recipe_from_dict
from alma_data.lab import oracle
from alma_data.store import Store


# -- reading a run --------------------------------------------------------------------------
def eval_oracle(store: Store, round: int) -> dict[str, float]:
    """prompt_id -> the oracle's score of the round's held-out answer."""
    rows = store.read(round, "eval_answers", columns=["prompt_id", "prompt", "response"]).to_pylist()
    return {r["prompt_id"]: oracle.score_prompt(r["prompt"], r["response"]) for r in rows}


def response_pool(store: Store, round: int) -> dict[str, list[dict]]:
    """prompt_id -> the round's responses with judge scores and the oracle's, for the
    prompts the oracle can read (a synthetic prompt outside the domain has no truth)."""
    prompts = {r["prompt_id"]: r["prompt"] for r in store.read(round, "prompts", columns=["prompt_id", "prompt"]).to_pylist()}
    judged = {r["response_id"]: r for r in
              store.read(round, "judgments", columns=["response_id", "score", "score_int"]).to_pylist()}
    pool: dict[str, list[dict]] = {}
    specs = {pid: oracle.parse(p) for pid, p in prompts.items()}
    for r in store.read(round, "responses", columns=["response_id", "prompt_id", "checkpoint", "response"]).to_pylist():
        spec = specs.get(r["prompt_id"])
        if spec is None:
            continue
        j = judged[r["response_id"]]
        pool.setdefault(r["prompt_id"], []).append({**r, "score": j["score"], "score_int": j["score_int"],
                                                    "oracle": oracle.score(spec, r["response"])})
    return pool


def in_domain_share(store: Store, round: int) -> float:
    rows = store.read(round, "prompts", columns=["prompt"]).to_pylist()
    return float(np.mean([oracle.parse(r["prompt"]) is not None for r in rows])) if rows else float("nan")


def instruction_types(store: Store, round: int) -> int:
    """Distinct kinds of instruction (task and which modifiers) among the round's prompts."""
    kinds = set()
    for r in store.read(round, "prompts", columns=["prompt"]).to_pylist():
        s = oracle.parse(r["prompt"])
        if s is not None:
            kinds.add((s.task, s.case, s.sep, bool(s.end), bool(s.ban)))
    return len(kinds)


# -- figures on a pool ----------------------------------------------------------------------
def _tiebreak(response_id: str, seed: int) -> float:
    return random.Random(f"{seed}:{response_id}").random()


def pick_oracle(pool: dict[str, list[dict]], key: str, seed: int = 0) -> np.ndarray:
    """Per prompt, the oracle's score of the response the judge ranks first by ``key``
    (``score``: real-valued, ``score_int``: integer); ties broken at random."""
    return np.array([max(rows, key=lambda r: (r[key], _tiebreak(r["response_id"], seed)))["oracle"]
                     for rows in pool.values()])


def best_of_n_ns(big: int) -> list[int]:
    """The n of a best-of-n curve over N = ``big`` responses: 1, 2, 4, ... up to N, and N itself
    (as ``sql/best_of_n_curve.sql`` draws it)."""
    return sorted({2 ** e for e in range(big.bit_length()) if 2 ** e <= big} | ({big} if big else set()))


def best_of_n_curve(pool: dict[str, list[dict]], ns: list[int], rank: str = "score") -> dict[int, np.ndarray]:
    """n -> per prompt, the oracle's expected score of the pick among n of the N responses drawn
    without replacement, the pick being the response ranked first by ``rank`` (``score``: the
    judge's real-valued score, ties by id; ``oracle``: the oracle's own, the ceiling a judge
    could reach); the exact expectation, as ``sql/best_of_n_curve.sql`` computes it for the
    judge's own score. A prompt with fewer than n responses is left out of n's."""
    out: dict[int, list[float]] = {n: [] for n in ns}
    for rows in pool.values():
        ranked = sorted(rows, key=lambda r: (r[rank], r["response_id"]))
        big = len(ranked)
        for n in ns:
            if n > big:
                continue
            w = [comb(i, n - 1) / comb(big, n) for i in range(big)]  # P(rank i+1 is the pick)
            out[n].append(sum(wi * r["oracle"] for wi, r in zip(w, ranked)))
    return {n: np.array(v) for n, v in out.items()}


def mix_vs_latest(pool: dict[str, list[dict]], latest: str, draws: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, the oracle's expected score of the judge's best of n responses, n = the
    number of checkpoints: all from ``latest`` vs one from each checkpoint (Monte Carlo)."""
    rng = random.Random(seed)
    only, mixed = [], []
    for rows in pool.values():
        by = {}
        for r in rows:
            by.setdefault(r["checkpoint"], []).append(r)
        n = len(by)
        if latest not in by or len(by[latest]) < n:
            continue
        best = lambda group: max(group, key=lambda r: (r["score"], r["response_id"]))["oracle"]
        only.append(np.mean([best(rng.sample(by[latest], n)) for _ in range(draws)]))
        mixed.append(np.mean([best([rng.choice(g) for g in by.values()]) for _ in range(draws)]))
    return np.array(only), np.array(mixed)


def judge_on_pairs(store: Store, round: int, name: str, pairs: list[dict]) -> dict[str, np.ndarray]:
    """The judge checkpoint's real-valued and integer scores of the chosen and rejected answers."""
    from alma_data.engines import open_engine
    from alma_data.scoring import real_valued_score

    recipe = recipe_from_dict(store.read_run()["recipe"])
    engine = open_engine(recipe, store.checkpoint_location(round, name), name=name, round=round, role="score",
                         cache_dir=store.local_root / "_cache" / "engine")
    prompts = [p["prompt"] for p in pairs] * 2
    answers = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    _, real, integer = real_valued_score(engine, prompts, answers, recipe.judge.scale)
    engine.close()
    k = len(pairs)
    return {"real": intervals.pair_outcomes(real[:k], real[k:]),
            "integer": intervals.pair_outcomes(integer[:k], integer[k:])}


def base_few_shot_on_pairs(store: Store, pairs: list[dict]) -> np.ndarray:
    """Per pair, 1 / 0.5 / 0 as the run's base model (``recipe.model``, the untrained M0) asked
    as the few-shot judge orders it by its real-valued scores: the judge the build's ``judge eval
    base few-shot`` stage opens (:func:`alma_data.judges.open_any_judge`, ``judge.eval_shots``
    of the run's seed annotations the judge is not evaluated on, drawn with the recipe's seed).
    NaN outcomes when the recipe leaves that rung out (``judge.eval_shots=0``)."""
    from alma_data.judges import open_any_judge

    recipe = recipe_from_dict(store.read_run()["recipe"])
    if not recipe.judge.eval_shots:
        return np.full(len(pairs), np.nan)
    judge = open_any_judge("base", recipe, store, shots=recipe.judge.eval_shots, seed=recipe.seed)
    try:
        _, real, _ = judge.score([p["prompt"] for p in pairs] * 2,
                                 [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    finally:
        judge.close()
    return intervals.pair_outcomes(real[:len(pairs)], real[len(pairs):])


def pool_pair_outcomes(pool: dict[str, list[dict]], key: str) -> np.ndarray:
    """Within each prompt, every pair of responses the oracle tells apart by >= 1 point:
    1 / 0.5 / 0 as the judge's ``key`` orders it right / ties / wrong."""
    out = []
    for rows in pool.values():
        for i, a in enumerate(rows):
            for b in rows[i + 1:]:
                if abs(a["oracle"] - b["oracle"]) >= 1.0:
                    hi, lo = (a, b) if a["oracle"] > b["oracle"] else (b, a)
                    out.append(float(intervals.pair_outcomes([hi[key]], [lo[key]])[0]))
    return np.array(out)


def mean(x) -> float:
    x = np.asarray([v for v in np.asarray(x, dtype=float).ravel() if np.isfinite(v)])
    return float(x.mean()) if len(x) else float("nan")


# -- one seed --------------------------------------------------------------------------------
def measure_seed(runs_dir: Path, seed: int, target: int, pairs: list[dict], log=print) -> dict:
    parent = Store(runs_dir, f"lab-s{seed}")
    sib = lambda name: Store(runs_dir, f"lab-s{seed}-{name}")
    f: dict[str, object] = {}
    for r in range(1, target + 1):
        held_out = eval_oracle(parent, r)
        f[f"rounds/M{r} held-out"] = mean(list(held_out.values()))
    f["held-out prompts the oracle scores"] = len(held_out)
    pool2 = response_pool(parent, 2)
    j1 = judge_on_pairs(parent, 1, "judge", pairs)
    f["int_vs_real/judge test, integer"] = mean(j1["integer"])
    f["int_vs_real/judge test, real-valued"] = mean(j1["real"])
    f["int_vs_real/round-2 pool pairs, integer"] = mean(pool_pair_outcomes(pool2, "score_int"))
    f["int_vs_real/round-2 pool pairs, real-valued"] = mean(pool_pair_outcomes(pool2, "score"))
    f["int_vs_real/best-of-N pick, integer"] = mean(pick_oracle(pool2, "score_int", seed))
    f["int_vs_real/best-of-N pick, real-valued"] = mean(pick_oracle(pool2, "score", seed))
    f["distill/judge test, off (round-1 judge)"] = mean(j1["real"])
    f["distill/judge test, rounded"] = mean(judge_on_pairs(parent, 2, "judge", pairs)["real"])
    f["distill/judge test, soft"] = mean(judge_on_pairs(sib("soft"), 2, "judge", pairs)["real"])
    rnd = sib("random_prompts")
    f["prompts/M2 held-out, random"] = mean(list(eval_oracle(rnd, 2).values()))
    f["prompts/M2 held-out, diversified"] = f["rounds/M2 held-out"]
    f["prompts/instruction kinds among K, random"] = instruction_types(rnd, 2)
    f["prompts/instruction kinds among K, diversified"] = instruction_types(parent, 2)
    f["prompts/in-domain share, random"] = in_domain_share(rnd, 2)
    f["prompts/in-domain share, diversified"] = in_domain_share(parent, 2)
    if target >= 3:
        pool3 = response_pool(parent, 3)
        only, mixed = mix_vs_latest(pool3, "m2", seed=seed)
        f["mix/best-of-3 pick, latest only"] = mean(only)
        f["mix/best-of-3 pick, 1:1:1"] = mean(mixed)
    ns = best_of_n_ns(max((len(v) for v in pool2.values()), default=0))
    for n, v in best_of_n_curve(pool2, ns).items():
        f[f"best_of_n/n={n}"] = mean(v)
    for n, v in best_of_n_curve(pool2, ns, rank="oracle").items():  # at n = N: the oracle's own best of N
        f[f"best_of_n_oracle/n={n}"] = mean(v)
    f["sft_vs_dpo/M2 held-out, DPO"] = mean(list(eval_oracle(sib("dpo"), 2).values()))
    f["sft_vs_dpo/M2 held-out, SFT"] = f["rounds/M2 held-out"]
    f["prompts in the round-2 pool the oracle reads"] = len(pool2)
    # The judge ladder on the test pairs (the paper's Table 2 in miniature): the rungs above are
    # read again under the ladder's names, not scored twice; only the base few-shot rung is new.
    f["ladder/base few-shot"] = mean(base_few_shot_on_pairs(parent, pairs))
    f["examples the base few-shot judge is shown"] = recipe_from_dict(parent.read_run()["recipe"]).judge.eval_shots
    for rung, key in LADDER.items():
        f[rung] = f[key]
    return f


LADDER = {"ladder/fine-tuned, integer": "int_vs_real/judge test, integer",
          "ladder/fine-tuned, real-valued": "int_vs_real/judge test, real-valued",
          "ladder/self-distilled rounded": "distill/judge test, rounded",
          "ladder/self-distilled soft": "distill/judge test, soft"}
"""The ladder's rungs a seed has measured already, and the figure each one is."""


# -- the comparisons: (section, what the paper reports, arm A key, arm B key) where the paper has B > A --
COMPARISONS = [
    ("Judge score: integer -> real-valued", "RewardBench 0.669 -> 0.846",
     "int_vs_real/judge test, integer", "int_vs_real/judge test, real-valued"),
    ("", "", "int_vs_real/round-2 pool pairs, integer", "int_vs_real/round-2 pool pairs, real-valued"),
    ("", "", "int_vs_real/best-of-N pick, integer", "int_vs_real/best-of-N pick, real-valued"),
    ("Judge self-distillation: off -> rounded", "RewardBench 0.846 -> 0.863",
     "distill/judge test, off (round-1 judge)", "distill/judge test, rounded"),
    ("Self-distillation target: rounded -> soft (ours)", "not in the paper",
     "distill/judge test, rounded", "distill/judge test, soft"),
    ("Prompt selection: random -> diversified", "diversified better",
     "prompts/M2 held-out, random", "prompts/M2 held-out, diversified"),
    ("", "", "prompts/instruction kinds among K, random", "prompts/instruction kinds among K, diversified"),
    ("Checkpoint mix: latest only -> 1:1:1", "1:1:1 better",
     "mix/best-of-3 pick, latest only", "mix/best-of-3 pick, 1:1:1"),
    ("Trainer: DPO -> SFT of the base on best-of-n", "the paper's recipe is SFT",
     "sft_vs_dpo/M2 held-out, DPO", "sft_vs_dpo/M2 held-out, SFT"),
]


def _ci(values) -> tuple[float, float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    return intervals.bootstrap(v, seed=0)


def verdict(diff_ci: tuple[float, float, float]) -> str:
    point, lo, hi = diff_ci
    if not np.isfinite(point):
        return "could not be measured"
    if np.isfinite(lo) and lo > 0:
        return "held"
    if np.isfinite(hi) and hi < 0:
        return "did not hold"
    return "could not be told apart"


def measure_lab(runs_dir: Path, size, log=print) -> dict:
    from alma_data.lab.seeds import judge_test_pairs
    from alma_data.seeds import iter_rows

    recipe_prompts = set()
    for name in ("lab_sft", "lab_judge"):
        recipe_prompts |= {row["prompt"] for _, row in iter_rows(f"bundled:{name}")}
    pairs = judge_test_pairs(size.judge_test_prompts, exclude=recipe_prompts)
    per_seed = {}
    for seed in size.seeds:
        log(f"lab: measuring seed {seed} with the oracle")
        per_seed[seed] = measure_seed(Path(runs_dir), seed, size.target, pairs, log)
    keys = list(next(iter(per_seed.values())))
    figures = {k: {"per_seed": [per_seed[s][k] for s in size.seeds], "mean": _ci([per_seed[s][k] for s in size.seeds])}
               for k in keys}
    comparisons = []
    for section, paper, a, b in COMPARISONS:
        if a not in figures or b not in figures:  # e.g. the checkpoint mix, which needs round 3
            nan = (float("nan"),) * 3
            comparisons.append({"section": section, "paper": paper, "a": a, "b": b, "a_mean": nan, "b_mean": nan,
                                "difference": nan, "verdict": "not run at this size"})
            continue
        diff = [per_seed[s][b] - per_seed[s][a] for s in size.seeds]
        d = _ci(diff)
        comparisons.append({"section": section, "paper": paper, "a": a, "b": b, "a_mean": figures[a]["mean"],
                            "b_mean": figures[b]["mean"], "difference": d, "verdict": verdict(d)})
    # Rounds and best-of-n: each step against the one before it.
    for prefix, section, paper in (("rounds/", "Rounds 1..R: held-out oracle score (Figure 2)", "Armo 7.78 (round 1) -> 8.34 (round 11)"),
                                   ("best_of_n/n=", "Best-of-n: the judge's pick, n of N (Figure 3)", "keeps rising up to N=200")):
        steps = [k for k in keys if k.startswith(prefix)]
        for i, (a, b) in enumerate(zip(steps, steps[1:])):
            d = _ci([per_seed[s][b] - per_seed[s][a] for s in size.seeds])
            comparisons.append({"section": section if i == 0 else "", "paper": paper if i == 0 else "", "a": a, "b": b,
                                "a_mean": figures[a]["mean"], "b_mean": figures[b]["mean"], "difference": d,
                                "verdict": verdict(d)})
    return {"figures": figures, "comparisons": comparisons, "judge_test_pairs": len(pairs)}


def _label(key: str) -> str:
    return key.split("/", 1)[1] if "/" in key else key


def summary_line(result: dict) -> str:
    """What the lab ran on, and how to read its figures: the line above its tables."""
    return (f"Lab ({result['size']}, seeds {', '.join(map(str, result['seeds']))}): "
            f"{result['wall_seconds'] / 60:.1f} min wall ({result['build_wall_seconds'] / 60:.1f} building), "
            f"{result['cpus']} CPUs ({result['cpu']}), load average at the end "
            f"{', '.join(f'{x:.1f}' for x in result['load_average'])}; {result['judge_test_pairs']} judge-test pairs. "
            "Figures: mean over seeds [95% bootstrap interval over seeds]; the verdict reads the interval "
            "of the per-seed difference (B - A).")


def lab_tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, columns, rows of text) of the lab's two tables, the comparisons and every figure
    per seed: one source for lab.md and lab.html."""
    f = lambda ci: intervals.fmt(tuple(ci), 2)
    comparisons = [[c["section"], c["paper"], _label(c["a"]), _label(c["b"]), f(c["a_mean"]), f(c["b_mean"]),
                    f(c["difference"]), c["verdict"]] for c in result["comparisons"]]
    per_seed = [[k, ", ".join("n/a" if x is None or not np.isfinite(x) else f"{x:.2f}" for x in v["per_seed"]),
                 f(v["mean"])] for k, v in result["figures"].items()]
    return [("", ["comparison", "paper", "A", "B", "A (oracle)", "B (oracle)", "B - A", "paper's direction"],
             comparisons),
            ("Every figure, per seed:", ["figure", "per seed", "mean"], per_seed)]


def render_markdown(result: dict, figures=()) -> str:
    """lab.md: the summary, the tables, and (``figures``: objects with ``name``, ``title``,
    ``caption``, as :func:`alma_data.lab.figures.plot_figures` gives them) links to the PNGs
    beside it."""
    lines = [summary_line(result)]
    for heading, columns, rows in lab_tables(result):
        lines += [""] + ([heading, ""] if heading else [])
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    for fig in figures:
        lines += ["", f"## {fig.title}", "", fig.caption, "", f"![{fig.title}]({fig.name}.png)"]
    return "\n".join(lines) + "\n"
