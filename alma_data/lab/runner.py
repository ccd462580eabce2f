"""``alma-data lab``: the paper's comparisons as sibling runs of ``recipe=lab``, over seeds.

For every seed a parent run ``lab-s{seed}`` is built to round R+1 with the paper's choices
(real-valued judge, rounded self-distillation, diversified prompts, checkpoint mix 1:1:1,
SFT). A sibling differs in one recipe key; it starts as a copy of the parent's rounds that
the key cannot touch (Parquet shards and model weights hard-linked, manifests copied) and is
built with ``--force``: the store's own config hashes then skip every stage the key leaves
as it was, and redo the rest. Comparisons that need no new model (integer vs real-valued
scores, the best-of-n curve, the checkpoint mix of a round's pool) are read from the
parent's tables. Then :mod:`alma_data.lab.measure` scores it all with the oracle.

The oracle is imported only after every build has finished (and a test checks that no build
imports it).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from alma_data.config import load_recipe
from alma_data.store import Store


@dataclass(frozen=True)
class Sibling:
    name: str
    """What the run differs in, and its suffix: ``lab-s0-soft``."""
    overrides: dict[str, str]
    rounds_kept: tuple[int, ...]
    """Rounds copied from the parent: every stage of them the key does not touch stays done."""
    target: int


SIBLINGS = (
    Sibling("soft", {"judge.distill_target": "soft"}, (1, 2), 2),
    # Its round-2 judge would be the distilled one of other data and plays no part in M2: not trained.
    Sibling("random_prompts", {"prompts.clusters": "1000000", "judge.self_distill": "false"}, (1,), 2),
    Sibling("dpo", {"train.trainer": "dpo"}, (1, 2), 2),
)
"""``prompts.clusters`` above the number of candidates makes every prompt its own cluster, so
"one fresh prompt from each of K random clusters" is K random prompts: the paper's baseline."""


@dataclass(frozen=True)
class LabSize:
    seeds: tuple[int, ...]
    target: int
    overrides: dict[str, str] = field(default_factory=dict)
    judge_test_prompts: int = 200
    m1_checkpoints: int = 2
    """Round 1's SFT checkpoints (m1a, m1b); the smoke run trains m1a only."""


SIZES = {
    "full": LabSize(seeds=(0, 1, 2), target=3),
    # A couple of minutes: one seed, the embedded random 2-layer model, a handful of rows a stage.
    "smoke": LabSize(seeds=(0,), target=2, judge_test_prompts=8, m1_checkpoints=1, overrides={
        "model": "tiny-random", "seeds.max_sft": "40", "seeds.max_judge": "48", "seeds.eval_prompts": "6",
        "train.max_steps": "1", "train.max_length": "96", "judge.max_steps": "1", "judge.max_length": "256",
        "judge.distill_samples": "8", "prompts.k": "3", "prompts.candidates": "8", "prompts.max_new_tokens": "16",
        "prompts.keep_truncated": "true", "prompts.near_dedup": "false", "prompts.min_words": "1",
        "prompts.embedder": "base_model", "responses.checkpoint_mix": "[1]",
        "responses.n": "6", "responses.max_new_tokens": "8", "eval.max_new_tokens": "8", "store.shard_rows": "64"}),
}


def fork_run(runs_dir: Path, parent: str, child: str, rounds: tuple[int, ...]) -> None:
    """``child`` as a copy of ``parent``'s ``rounds`` (data hard-linked, small files copied)."""
    src, dst = Path(runs_dir) / parent, Path(runs_dir) / child
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copy2(src / "run.json", dst / "run.json")

    def link_or_copy(a: str, b: str) -> None:
        # Data files are only ever replaced by rename, never written in place: a link is safe.
        if Path(a).suffix in (".parquet", ".safetensors", ".bin"):
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    for r in rounds:
        folder = src / f"round={r}"
        if folder.is_dir():
            shutil.copytree(folder, dst / f"round={r}", copy_function=link_or_copy,
                            ignore=shutil.ignore_patterns(".*.tmp", "_cache"))


def seed_overrides(seed: int, m1_checkpoints: int = 2) -> dict[str, str]:
    """A lab seed moves everything random in the build: the recipe's seed and round 1's SFT seeds."""
    m1 = ", ".join(str(10 * seed + 1 + i) for i in range(m1_checkpoints))
    return {"seed": str(seed), "train.m1_seeds": f"[{m1}]"}


def check_base_model(model: str) -> None:
    """A cached lab model (``lab-tiny``, ``lab-small``) must be the one today's
    :mod:`alma_data.lab.base_model` makes: the model cache knows models by name only, so a
    changed corpus, training or shape would go unseen."""
    from alma_data.lab.base_model import MODELS, VERSION

    if model not in MODELS:
        return
    from dataclasses import asdict

    from alma_data.errors import AlmaError
    from alma_data.models import resolve

    folder = Path(resolve(model))
    made = json.loads((folder / "lab_base.json").read_text()) if (folder / "lab_base.json").is_file() else {}
    shape = made.get("shape", asdict(MODELS["lab-tiny"]) if model == "lab-tiny" else None)  # version 2 kept none
    if made.get("version") != VERSION or shape != asdict(MODELS[model]):
        raise AlmaError(f"{folder} holds {model} version {made.get('version')} of shape {shape}, this alma-data makes "
                        f"version {VERSION} of shape {asdict(MODELS[model])}; remove that folder and run again to "
                        f"pretrain it anew (minutes)")


def build_all(runs_dir: Path, size: LabSize, log=print, quiet: bool = True) -> dict:
    """Every run of the lab; returns {run name: seconds of its build}."""
    from alma_data.round import build

    check_base_model(load_recipe("lab", size.overrides).model)
    seconds = {}
    for seed in size.seeds:
        parent = f"lab-s{seed}"
        base = {**size.overrides, **seed_overrides(seed, size.m1_checkpoints)}
        t0 = time.time()
        build(load_recipe("lab", base), Store(runs_dir, parent), size.target, quiet=quiet)
        seconds[parent] = round(time.time() - t0, 1)
        log(f"lab: {parent} built to round {size.target} in {seconds[parent]:.0f}s")
        for sib in SIBLINGS:
            child = f"{parent}-{sib.name}"
            t0 = time.time()
            if not Store(runs_dir, child).exists():  # an existing sibling resumes like any run
                fork_run(runs_dir, parent, child, sib.rounds_kept)
            ctx = build(load_recipe("lab", {**base, **sib.overrides}), Store(runs_dir, child), sib.target,
                        force=True, quiet=quiet)
            seconds[child] = round(time.time() - t0, 1)
            log(f"lab: {child} built in {seconds[child]:.0f}s ({len(ctx.ran)} stages run, "
                f"{len(ctx.skipped)} shared with {parent})")
    return seconds


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_lab(runs_dir: str | Path, size_name: str = "full", seeds: tuple[int, ...] | None = None,
            log=print, quiet: bool = True) -> dict:
    """Build every run, then measure; writes ``<runs_dir>/lab.json``, ``lab.md`` and ``lab.html``
    with its figures beside it (``lab_*.png``)."""
    runs_dir = Path(runs_dir)
    size = SIZES[size_name]
    if seeds is not None:
        from dataclasses import replace

        size = replace(size, seeds=tuple(seeds))
    t0 = time.time()
    build_seconds = build_all(runs_dir, size, log, quiet)
    built = time.time() - t0
    from alma_data.lab.figures import plot_figures, render_html
    from alma_data.lab.measure import lab_tables, measure_lab, render_markdown, summary_line  # the oracle: only now

    result = measure_lab(runs_dir, size, log)
    result.update(size=size_name, seeds=list(size.seeds), build_seconds=build_seconds,
                  wall_seconds=round(time.time() - t0, 1), build_wall_seconds=round(built, 1),
                  cpu=cpu_model(), cpus=os.cpu_count(), load_average=list(os.getloadavg()))
    (runs_dir / "lab.json").write_text(json.dumps(result, indent=1, default=float))
    figures = plot_figures(result, runs_dir)
    (runs_dir / "lab.md").write_text(render_markdown(result, figures))
    (runs_dir / "lab.html").write_text(render_html(summary_line(result), lab_tables(result), figures))
    log(f"lab: done in {result['wall_seconds']:.0f}s; the table: {runs_dir / 'lab.md'}")
    return result


def cmd_lab(args, split_assignments, default_runs_dir: str) -> int:
    from alma_data.config import RecipeError

    special, overrides, rest = split_assignments(args.assignments, {"size", "seeds", "runs_dir"})
    if rest or overrides:
        raise RecipeError(f"unexpected argument(s) {rest or list(overrides)}; lab takes size=full|smoke, "
                          "seeds=0,1,2 and runs_dir=DIR")
    size = special.get("size", "full")
    if size not in SIZES:
        raise RecipeError(f"size must be one of {', '.join(SIZES)}; got {size!r}")
    seeds = None
    if "seeds" in special:
        try:
            seeds = tuple(int(s) for s in special["seeds"].split(","))
        except ValueError:
            raise RecipeError(f"seeds must be integers separated by commas, e.g. seeds=0,1,2; got {special['seeds']!r}") from None
    runs_dir = special.get("runs_dir", str(Path(default_runs_dir) / "lab"))
    run_lab(runs_dir, size, seeds, log=lambda m: print(m, file=sys.stderr, flush=True), quiet=args.quiet)
    print((Path(runs_dir) / "lab.md").read_text())
    return 0
