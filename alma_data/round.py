"""``build(round=R)``: whatever of rounds 1..R is missing, in the stage list's order
(:mod:`alma_data.plan`), one build of a run at a time, under the run's one recipe."""

from __future__ import annotations

import resource
import time

from alma_data.config import Recipe, RecipeError, fingerprint, recipe_from_dict
from alma_data.console import build_output, log_path
from alma_data.cli_errors import no_space
from alma_data.errors import AlmaError, BuildError
from alma_data.plan import build_plan
from alma_data.recipe_checks import check_for_rounds, check_model_reachable
from alma_data.runner import run_stages
from alma_data.stage import Context
from alma_data.store import Store

__all__ = ["BuildError", "build", "check_run", "recipe_diff"]


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
    (:func:`alma_data.runner.run_stages`), so that a refused seed file leaves the run as it was."""
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


def _record_build(ctx: Context, target_round: int, t0: float, seconds: float, peak_mib: float) -> None:
    """Append this build's timings to ``<run>/builds.jsonl``."""
    record = {"started": t0, "target_round": target_round, "seconds": round(seconds, 1),
              "peak_memory_mib": round(peak_mib), "stages": ctx.records}
    children = max((r.get("children_peak_memory_mib") or 0 for r in ctx.records), default=0)
    if children:
        record["children_peak_memory_mib"] = children
    ctx.store.append_jsonl("builds.jsonl", record)


def build_peak_mib(ctx: Context) -> float:
    """The build's peak: the largest of its stages' own peaks (each stage resets the kernel's
    high-water mark, which ``ru_maxrss`` reads too, so ``ru_maxrss`` alone is the last stage's)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return max([own] + [r.get("peak_memory_mib") or 0 for r in ctx.records])


def _per_round(ctx: Context) -> str:
    per_round: dict[int, float] = {}
    for rec in ctx.records:
        per_round[rec["round"]] = per_round.get(rec["round"], 0.0) + rec["seconds"]
    return ", ".join(f"round {r} {s:.0f}s" for r, s in sorted(per_round.items()))


def build(recipe: Recipe, store: Store, target_round: int, *, force: bool = False, quiet: bool = False,
          verbose: bool = False) -> Context:
    """Build rounds 1..``target_round`` of ``store``'s run. The terminal gets the build's lines
    and one progress bar a stage; the libraries' bars and logs go to the run's log file,
    ``logs/build-<time>.log``, unless ``verbose`` (:mod:`alma_data.console`)."""
    if target_round < 1:
        raise BuildError(f"round={target_round}: rounds start at 1")
    if target_round > recipe.rounds + 1:
        raise BuildError(f"round={target_round}: recipe {recipe.name} has rounds={recipe.rounds} feedback rounds "
                         f"(rounds 1..{recipe.rounds + 1}); raise it with rounds={target_round - 1}")
    check_for_rounds(recipe, target_round)  # before the run is locked, let alone written
    check_model_reachable("model", recipe.model)
    with store.build_lock():
        return _build(recipe, store, target_round, force=force, quiet=quiet, verbose=verbose)


def keep_measured_sets(store: Store, recipe: Recipe, log) -> None:
    """A run goes on measuring the sets an earlier build named (``judge.eval_sets``,
    ``eval.prompt_sets``, with their split and limit) when this build names none: a later
    ``build round=3`` without them neither skips them nor drops their rows from judge_quality.
    Naming sets replaces them."""
    if not (store.exists() and store.done_tables()):
        return
    old = store.read_run()["recipe"]
    for section, key, companions in (("judge", "eval_sets", ("eval_split", "eval_limit")),
                                     ("eval", "prompt_sets", ("prompt_split", "prompt_limit"))):
        mine, before = getattr(recipe, section), old.get(section, {})
        if not getattr(mine, key) and before.get(key):
            for k in (key, *companions):
                if k in before:
                    setattr(mine, k, before[k])
            log(f"measuring the run's {section}.{key} as its earlier builds did: {', '.join(before[key])}")


def _build(recipe: Recipe, store: Store, target_round: int, *, force: bool, quiet: bool, verbose: bool) -> Context:
    check_run(store, recipe, force)
    path = log_path(store.local_root)
    made = path.parent  # the highest folder the log makes (the run's own, for a new run)
    while not made.parent.exists():
        made = made.parent
    made = made if not made.exists() else None
    refused = False
    with build_output(path, verbose=verbose) as out:
        ctx = Context(store, recipe, quiet=quiet, out=out)
        try:
            return _build_stages(recipe, store, target_round, ctx)
        except Exception as exc:
            # refused (a bad seed file, a bad value) or a full disk, before any stage finished
            refused = not ctx.ran and (isinstance(exc, AlmaError) or no_space(exc) is not None)
            raise
        finally:
            if not refused:
                _copy_log(store, out)
            else:
                # Such a build leaves the run as it was: its log, which holds only the lines the
                # terminal showed, goes too.
                _remove_log(path, made)


def _remove_log(path, made) -> None:
    """Remove a refused build's log, and the folders it made while they are empty (the file is
    still open: on POSIX it goes when closed)."""
    path.unlink(missing_ok=True)
    folder = path.parent
    while made is not None and folder != made.parent:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _copy_log(store: Store, out) -> None:
    """On an object store the log is written beside the run's cache, and copied into the run."""
    if store.remote:
        try:
            store.upload_dir(out.path.parent, "logs")
        except Exception:  # noqa: BLE001 - a log not copied fails no build
            pass


def _build_stages(recipe: Recipe, store: Store, target_round: int, ctx: Context) -> Context:
    keep_measured_sets(store, recipe, ctx.log)
    t0 = time.time()
    ctx.log(f"building run {store.run!r} ({store.where()}) to round {target_round}, recipe {recipe.name} "
            f"[{recipe.fingerprint()}], model {recipe.model}")
    where = f"{store.where().rstrip('/')}/logs/{ctx.out.path.name}" if store.remote else ctx.out.path
    ctx.log(f"log: {where} (" + ("with the libraries' output)" if ctx.out.verbose else
                                 "the libraries' output; --verbose shows it here)"))
    # The seeds passed: the run takes this recipe (a refused seed file leaves run.json as it was).
    run_stages(ctx, build_plan(recipe, target_round),
               after_seeds=lambda: store.write_run(recipe.to_dict(), recipe.fingerprint()))
    seconds = time.time() - t0
    peak = build_peak_mib(ctx)
    _record_build(ctx, target_round, t0, seconds, peak)
    if not ctx.ran:
        ctx.log(f"run {store.run!r} is already built to round {target_round}: nothing to do")
    else:
        # The closing line: counts, time (per round too) and memory; then where to look, on a line of its own
        # (a run's path can be long, the counts stay within a terminal's width).
        ctx.log(f"round {target_round} built: {len(ctx.ran)} stages run, {len(ctx.skipped)} already done, "
                f"{seconds:.0f}s ({_per_round(ctx)}), peak memory {peak:,.0f} MiB")
        ctx.log(f"  look at it with: alma-data query {store.cli_args()} "
                f"\"select round, count(*) from sft group by all\"")
    return ctx
