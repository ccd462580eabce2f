"""Runs the stages of a round in order; ``build(round=R)`` runs whatever of 1..R is missing."""

from __future__ import annotations

import resource
import string
import time

from alma_data.config import Recipe, RecipeError, fingerprint, recipe_from_dict
from alma_data.errors import AlmaError
from alma_data.recipe_checks import check_for_rounds
from alma_data.stages.base import Context
from alma_data.stages.evaluate import answer_heldout, evaluate_round
from alma_data.stages.judge import judge_eval
from alma_data.stages.prompts import cluster_candidates, select_prompts, synthesize_candidates
from alma_data.stages.responses import judge_responses, sample_responses
from alma_data.stages.seed import seed_stage
from alma_data.stages.select import select_data
from alma_data.stages.train import train_dpo, train_judge, train_policy
from alma_data.store import Store, TableRef


class BuildError(AlmaError, RuntimeError):
    pass


def m1_names(recipe: Recipe) -> list[str]:
    """Round 1's SFT checkpoints: m1a, m1b, ... one per seed in ``train.m1_seeds``."""
    return [f"m1{string.ascii_lowercase[i]}" for i in range(len(recipe.train.m1_seeds))]


def round_plan(recipe: Recipe, r: int) -> list[tuple[str, str]]:
    """What round r leaves in the store when done: ("table" | "checkpoint", name), in build order."""
    if r == 1:
        first, *others = m1_names(recipe)
        return ([("table", "prompts"), ("table", "sft"), ("table", "judge_seed"), ("checkpoint", first),
                 ("table", "eval_answers"), ("checkpoint", "judge"), ("table", "judge_eval"),
                 ("table", "judge_quality"), ("table", "eval")]
                + [("checkpoint", n) for n in others])
    plan = [("table", t) for t in ("prompt_candidates", "prompt_clusters", "prompts", "responses", "judgments",
                                   "sft", "dpo", "judge_distill")]
    plan += [("checkpoint", f"m{r}"), ("table", "eval_answers")]
    if r == 2 and recipe.judge.self_distill:
        plan += [("checkpoint", "judge"), ("table", "judge_eval"), ("table", "judge_quality")]
    return plan + [("table", "eval")]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_diff(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return [f"  {k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_run(store: Store, recipe: Recipe, force: bool = False) -> None:
    """A run keeps one recipe: a changed one is refused unless ``--force``. A run in which no
    stage ever finished (its seed files were refused, say) holds nothing to keep: it takes the
    new recipe as a new run would, and its ``run.json`` is written now. A run that holds tables
    keeps its ``run.json`` until the seed stage has passed under the new recipe
    (:func:`build_round1`), so that a refused seed file leaves the run as it was."""
    if not (store.exists() and store.done_tables()):
        store.write_run(recipe.to_dict(), recipe.fingerprint())
        return
    old = store.read_run()
    try:
        # Through today's dataclasses, so a key added since with its default is no change.
        old_recipe = recipe_from_dict(old["recipe"]).data_dict()
    except RecipeError as exc:
        raise BuildError(f"run {store.run!r} was made by another version of alma-data and its recipe no longer "
                         f"loads ({exc}); start a new run with run=NEW_NAME") from exc
    if fingerprint(old_recipe) != recipe.fingerprint():
        diff = recipe_diff(old_recipe, recipe.data_dict())
        if not force:
            raise BuildError(
                f"run {store.run!r} was built with another recipe ({old['fingerprint']}); the differences:\n"
                + "\n".join(diff)
                + f"\nStart a new run with run=NEW_NAME, or add --force to rebuild {store.run!r} "
                "from the first stage the change touches."
            )


def build_round1(ctx: Context) -> None:
    seed_stage(ctx)
    ctx.store.write_run(ctx.recipe.to_dict(), ctx.recipe.fingerprint())  # the seeds passed: the run takes this recipe
    (first, *others), (seed, *other_seeds) = m1_names(ctx.recipe), ctx.recipe.train.m1_seeds
    train_policy(ctx, 1, first, seed, [TableRef(1, "sft")])
    # m1a's held-out answers right after it, and the judge before the other round-1
    # checkpoints: a new build shows a trained model's answers after one training, and
    # their scores after two.
    answer_heldout(ctx, 1)
    train_judge(ctx, 1, "judge", [TableRef(1, "judge_seed")])
    judge_eval(ctx, 1, "judge")
    evaluate_round(ctx, 1)
    for name, seed in zip(others, other_seeds):
        train_policy(ctx, 1, name, seed, [TableRef(1, "sft")])


def build_feedback_round(ctx: Context, r: int) -> None:
    """Round r >= 2: prompts -> responses -> judgments -> selection -> M_r (and the judge's distillation)."""
    recipe = ctx.recipe
    synthesize_candidates(ctx, r)
    cluster_candidates(ctx, r)
    select_prompts(ctx, r)
    sample_responses(ctx, r)
    judge_responses(ctx, r)
    select_data(ctx, r)
    if recipe.train.trainer == "sft":
        # The paper's choice: M_r is SFT of the *base* model on D1 u ... u D_r.
        train_policy(ctx, r, f"m{r}", recipe.seed, [TableRef(k, "sft") for k in range(1, r + 1)])
    else:
        train_dpo(ctx, r, f"m{r}", TableRef(r, "dpo"), start=(1, m1_names(recipe)[0]))
    answer_heldout(ctx, r)
    if r == 2 and recipe.judge.self_distill:
        # After the first feedback round the judge learns from its own real-valued scores.
        train_judge(ctx, 2, "judge", [TableRef(1, "judge_seed"), TableRef(2, "judge_distill")], start=(1, "judge"))
        judge_eval(ctx, 2, "judge")
    evaluate_round(ctx, r)


def _record_build(ctx: Context, target_round: int, t0: float, seconds: float, peak_mib: float) -> None:
    """Append this build's timings to ``<run>/builds.jsonl``."""
    record = {"started": t0, "target_round": target_round, "seconds": round(seconds, 1),
              "peak_memory_mib": round(peak_mib), "stages": ctx.records}
    ctx.store.append_jsonl("builds.jsonl", record)


def _per_round(ctx: Context) -> str:
    per_round: dict[int, float] = {}
    for rec in ctx.records:
        per_round[rec["round"]] = per_round.get(rec["round"], 0.0) + rec["seconds"]
    return ", ".join(f"round {r} {s:.0f}s" for r, s in sorted(per_round.items()))


def build(recipe: Recipe, store: Store, target_round: int, *, force: bool = False, quiet: bool = False) -> Context:
    if target_round < 1:
        raise BuildError(f"round={target_round}: rounds start at 1")
    if target_round > recipe.rounds + 1:
        raise BuildError(f"round={target_round}: recipe {recipe.name} has rounds={recipe.rounds} feedback rounds "
                         f"(rounds 1..{recipe.rounds + 1}); raise it with rounds={target_round - 1}")
    check_for_rounds(recipe, target_round)  # before the run is locked, let alone written
    with store.build_lock():
        return _build(recipe, store, target_round, force=force, quiet=quiet)


def _build(recipe: Recipe, store: Store, target_round: int, *, force: bool, quiet: bool) -> Context:
    check_run(store, recipe, force)
    ctx = Context(store, recipe, quiet=quiet)
    t0 = time.time()
    ctx.log(f"building run {store.run!r} ({store.where()}) to round {target_round}, recipe {recipe.name} "
            f"[{recipe.fingerprint()}], model {recipe.model}")
    build_round1(ctx)
    for r in range(2, target_round + 1):
        build_feedback_round(ctx, r)
    seconds = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _record_build(ctx, target_round, t0, seconds, peak)
    if not ctx.ran:
        ctx.log(f"run {store.run!r} is already built to round {target_round}: nothing to do")
    else:
        # The one closing line: counts, time (per round too) and memory.
        ctx.log(f"round {target_round} built: {len(ctx.ran)} stages run, {len(ctx.skipped)} already done, "
                f"{seconds:.1f}s ({_per_round(ctx)}), peak memory {peak:.0f} MiB; look at it with: "
                f"alma-data query {store.cli_args()} \"select round, count(*) from sft group by all\"")
    return ctx
