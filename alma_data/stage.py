"""A stage as data, and what every stage's ``run`` is handed.

A :class:`Stage` names what it reads (tables, and checkpoints whose hashes join its
configuration), the one table or checkpoint it writes, the recipe keys its output depends
on, whether its shards run on the executor, and the function that makes the output. The
round is a list of them (:mod:`alma_data.plan`); one runner (:mod:`alma_data.runner`) walks
the list. Stages never call one another: what two stages share lives below them
(:mod:`alma_data.scoring`, :mod:`alma_data.roles`, :mod:`alma_data.sql`, this module).
"""

from __future__ import annotations

import dataclasses
import sys
import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Callable, Iterator

from alma_data.config import MEASUREMENT_KEYS, Recipe, fingerprint, without_keys
from alma_data.store import Store, TableRef

round_ = round  # the stages' `round` argument shadows the builtin


# -- recipe keys ------------------------------------------------------------------------------
@cache
def _fields(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def recipe_key(key: str) -> str:
    """``key`` when it names a field (or a section) of the recipe's dataclasses; a misspelt
    key fails here, when the stage that names it is declared."""
    cls: Any = Recipe
    for part in key.split("."):
        if not (dataclasses.is_dataclass(cls) and part in _fields(cls)):
            raise KeyError(f"{key!r} is not a recipe key (no {part!r} in {getattr(cls, '__name__', cls)})")
        cls = _fields(cls)[part]
    return key


def recipe_keys(*keys: str) -> tuple[str, ...]:
    return tuple(recipe_key(k) for k in keys)


def config_hash(recipe: Recipe, *keys: str, **extra: Any) -> str:
    """Hash of the recipe keys a stage depends on, plus stage-specific values. A whole section
    (``eval``) is hashed without its measurement keys (``eval.prompt_sets``): they are the
    measurement stages' own, named one by one where a stage depends on them."""
    data = recipe.to_dict()
    picked: dict[str, Any] = {}
    for key in keys:
        value: Any = data
        for part in key.split("."):
            value = value[part]
        if isinstance(value, dict):
            inner = tuple(k.removeprefix(key + ".") for k in MEASUREMENT_KEYS if k.startswith(key + "."))
            value = without_keys(value, inner)
        picked[key] = value
    picked.update(extra)
    return fingerprint(picked)


# -- the declaration --------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint a stage reads; its manifest hash joins the stage's configuration hash."""

    round: int
    name: str

    def __str__(self) -> str:
        return f"round={self.round}/checkpoints/{self.name}"


@dataclass(frozen=True)
class Stage:
    name: str
    """What the build's log calls it (``prompt candidates``, ``train m1a``)."""
    round: int
    output: str
    """The one table, or checkpoint, it writes."""
    run: Callable[["Context", "Stage", str], dict | None]
    """``run(ctx, stage, config_hash)`` writes the output and returns its summary (rows, rate)."""
    kind: str = "table"
    """``table`` or ``checkpoint``."""
    inputs: tuple[TableRef, ...] = ()
    """Tables read; their manifest hashes are the output's inputs."""
    keys: tuple[str, ...] = ()
    """The recipe keys the output depends on (checked by :func:`recipe_keys`)."""
    hashed: dict[str, Any] = field(default_factory=dict)
    """Values other than recipe keys in the configuration hash: the round, a seed, and the
    checkpoints read (a :class:`CheckpointRef` here stands for that checkpoint's manifest hash)."""
    sharded: bool = False
    """Whether its shards run on the executor (``executor=local|ray``)."""
    params: dict[str, Any] = field(default_factory=dict)
    """What ``run`` needs beyond the recipe (a checkpoint's name and seed, the judge to use)."""
    reads_seed_files: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("table", "checkpoint"):
            raise ValueError(f"stage {self.name!r}: kind must be table or checkpoint, not {self.kind!r}")
        recipe_keys(*self.keys)

    @property
    def where(self) -> str:
        return f"round={self.round}/" + ("checkpoints/" if self.kind == "checkpoint" else "") + self.output

    @property
    def checkpoints(self) -> list[CheckpointRef]:
        """The checkpoints it reads, in the order its hash names them."""
        found: list[CheckpointRef] = []

        def walk(v: Any) -> None:
            if isinstance(v, CheckpointRef):
                found.append(v)
            elif isinstance(v, dict):
                for x in v.values():
                    walk(x)

        walk(self.hashed)
        return found

    def config_hash(self, recipe: Recipe, store: Store) -> str:
        def resolve(v: Any) -> Any:
            if isinstance(v, CheckpointRef):
                return store.checkpoint_manifest_hash(v.round, v.name)
            if isinstance(v, dict):
                return {k: resolve(x) for k, x in v.items()}
            return v

        return config_hash(recipe, *self.keys, **resolve(self.hashed))


def shard_count(rows: int, per_shard: int, at_least: int = 0) -> int:
    """How many shards of ``per_shard`` rows hold ``rows`` rows (the last one may be short)."""
    return max(at_least, -(-rows // per_shard))


def shard_slice(index: int, per_shard: int, rows: int) -> range:
    """The row indices of shard ``index``."""
    return range(index * per_shard, min(rows, (index + 1) * per_shard))


# -- what a stage's run is handed -------------------------------------------------------------
@dataclass
class Context:
    store: Store
    recipe: Recipe
    quiet: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    """Tables and checkpoints found damaged (and so written again) by this build."""
    scratch: dict[Any, Any] = field(default_factory=dict)
    """What stages of one build make once and share (the seed rows, a round's picks): keyed by
    what it is; nothing in it outlives the build, so a rerun makes it again from the store."""

    out: Any = None
    """The build's :class:`alma_data.console.BuildOutput` (terminal and log file), if it has one."""

    def log(self, message: str) -> None:
        """One of the build's lines: on the terminal (unless quiet) and in the build's log file."""
        if self.out is not None:
            self.out.line(message, show=not self.quiet)
        elif not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def once(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self.scratch:
            self.scratch[key] = make()
        return self.scratch[key]

    def show_example(self, what: str, prompt: str, answer: str, score: float | None, query: str,
                     before: tuple[str, str] | None = None) -> None:
        """One real row of a table just written, and the query that shows the rest, so the
        first model output is on screen minutes into a build rather than at its end;
        ``before``: (model, its answer) to show beside it, what the answer was."""
        from alma_data.console import columns

        width = columns()

        def clip(text: str, head: str, tail: str = "") -> str:
            """``head`` + the text quoted and cut to fit the line + ``tail``."""
            flat = " ".join(text.split())
            room = max(24, width - len(head) - len(tail) - 5)  # the quotes and "..."
            return head + repr(flat[:room] + ("..." if len(flat) > room else "")) + tail

        judged = "" if score is None else f"  (judge: {score:.2f})"
        lines = [clip(prompt, f"  e.g. {what}: "), clip(answer, "    -> ", judged)]
        if before is not None:
            lines.append(clip(before[1], f"    {before[0]} had: "))
        lines.append(f"  all of them: alma-data query {self.store.cli_args()} \"{query}\"")
        self.log("\n".join(lines))

    def open_engine(self, model_path: str, *, name: str = "base", round: int | None = None,
                    role: str = "sample"):
        """The recipe's engine for one checkpoint (``base``: the recipe's model)."""
        from alma_data.engines import open_engine

        return open_engine(self.recipe, model_path, name=name, round=round, role=role,
                           cache_dir=self.store.local_root / "_cache" / "engine")

    def executor(self):
        """The recipe's executor (``executor=local|ray``) for this build's shards."""
        from alma_data.executors import make_executor

        return make_executor(self.recipe, self.store.local_root / "_cache" / "engine", self.log)

    def progress(self, total: int, desc: str, unit: str = "it"):
        from tqdm.auto import tqdm

        # The stage's one bar, on the terminal also while the libraries' output goes to the log
        # file; it goes when done, and the stage's summary line takes its place.
        file = self.out.terminal if self.out is not None else sys.stderr
        return tqdm(total=total, desc=desc, unit=unit, disable=self.quiet, dynamic_ncols=True, file=file,
                    leave=False)

    # -- skip what is done --------------------------------------------------------------
    def inputs_hash(self, inputs) -> dict[str, str]:
        return {str(ref): self.store.input_hash(ref) for ref in inputs}

    def table_current(self, round: int, table: str, config_hash: str, inputs) -> bool:
        """Done, intact, and made by this configuration from these inputs (else it is redone)."""
        if not self._intact_table(round, table):
            return False
        m = self.store.manifest(round, table)
        return m is not None and m["config_hash"] == config_hash and m["inputs"] == self.inputs_hash(inputs)

    def _intact_table(self, round: int, table: str) -> bool:
        """The cheap check of a table its stage is about to skip. A damaged one loses what is
        damaged (its bad shards, or every shard when its manifest is unreadable) and its
        manifest, so the stage writes just that again, resuming as after a stop; a shard
        written again byte for byte gives the table its old hash, and the stages built
        from it stay done."""
        from alma_data.store.integrity import check_table, describe, quarantine_table, restamp_table

        moved: list = []
        damage = check_table(self.store, round, table, moved=moved)
        if not damage:
            if moved:
                restamp_table(self.store, round, table, moved)
            return True
        self.log(f"[round {round}] {table}: damaged ({describe(damage)}); writing it again")
        quarantine_table(self.store, round, table, damage)
        self.repaired.append(f"round={round}/{table}")
        return False

    def checkpoint_current(self, round: int, name: str, config_hash: str, inputs: dict[str, str]) -> bool:
        if not self.store.checkpoint_done(round, name):
            return False
        from alma_data.store.integrity import check_checkpoint, describe, quarantine_checkpoint

        damage = check_checkpoint(self.store, round, name)
        if damage:
            self.log(f"[round {round}] checkpoint {name}: damaged ({describe(damage)}); training it again")
            quarantine_checkpoint(self.store, round, name)
            self.repaired.append(f"round={round}/checkpoints/{name}")
            return False
        m = self.store.checkpoint_manifest(round, name) or {}
        return m.get("config_hash") == config_hash and m.get("inputs") == inputs

    @contextmanager
    def stage(self, round: int, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage and measure its own peak memory (:class:`alma_data.memory.StagePeak`);
        the body fills ``info`` (rows, skipped, rate) for its summary line."""
        from alma_data.memory import StagePeak

        info: dict[str, Any] = {}
        meter = StagePeak().start()
        t0 = time.time()
        try:
            yield info
        finally:
            memory = meter.stop()  # also after a failure: the next build's stages start clean
        seconds = time.time() - t0
        self.timings[f"round={round}/{name}"] = seconds
        (self.skipped if info.get("skipped") else self.ran).append(f"round={round}/{name}")
        self.records.append({"round": round, "stage": name, "seconds": round_(seconds, 2),
                             "skipped": bool(info.get("skipped")), "rows": info.get("rows"), "rate": info.get("rate"),
                             **memory})
        if info.get("skipped"):
            self.log(f"[round {round}] {name}: already done ({info.get('rows', '?')} rows), skipped")
        else:
            extra = f", {info['rate']}" if info.get("rate") else ""
            children = (f" + {memory['children_peak_memory_mib']:,} in processes"
                        if memory.get("children_peak_memory_mib") else "")
            self.log(f"[round {round}] {name}: {info.get('rows', 0):,} rows in {seconds:.1f}s{extra}, "
                     f"peak {memory['peak_memory_mib']:,} MiB{children}")
