"""What every stage shares: the build context, skip-if-done, and summary lines."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

round_ = round  # the stages' `round` argument shadows the builtin

from alma_data.config import Recipe, fingerprint
from alma_data.store import Store, TableRef


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

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def show_example(self, what: str, prompt: str, answer: str, score: float | None, query: str) -> None:
        """One real row of a table just written, and the query that shows the rest, so the
        first model output is on screen minutes into a build rather than at its end."""
        clip = lambda t, n: (" ".join(t.split())[:n] + ("..." if len(" ".join(t.split())) > n else ""))
        judged = "" if score is None else f"  (judge: {score:.2f})"
        self.log(f"  e.g. {what}: {clip(prompt, 70)!r}\n    -> {clip(answer, 160)!r}{judged}\n"
                 f"  all of them: alma-data query {self.store.cli_args()} \"{query}\"")

    def open_engine(self, model_path: str, *, name: str = "base", round: int | None = None,
                    role: str = "sample"):
        """The recipe's engine for one checkpoint (``base``: the recipe's model)."""
        from alma_data.engines import open_engine

        return open_engine(self.recipe, model_path, name=name, round=round, role=role,
                           cache_dir=self.store.local_root / "_cache" / "engine")

    def progress(self, total: int, desc: str, unit: str = "it"):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=self.quiet, dynamic_ncols=True)

    # -- skip what is done --------------------------------------------------------------
    def inputs_hash(self, inputs: list[TableRef]) -> dict[str, str]:
        return {str(ref): self.store.input_hash(ref) for ref in inputs}

    def table_current(self, round: int, table: str, config_hash: str, inputs: list[TableRef]) -> bool:
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
        from alma_data.integrity import check_table, describe, quarantine_table, restamp_table

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

    def skip_if_current(self, info: dict[str, Any], round: int, table: str, config_hash: str,
                        inputs: list[TableRef]) -> bool:
        """True (and the stage's summary says so) when the table is already made this way."""
        if not self.table_current(round, table, config_hash, inputs):
            return False
        info.update(skipped=True, rows=self.store.manifest(round, table)["rows"])
        return True

    def checkpoint_current(self, round: int, name: str, config_hash: str, inputs: dict[str, str]) -> bool:
        if not self.store.checkpoint_done(round, name):
            return False
        from alma_data.integrity import check_checkpoint, describe, quarantine_checkpoint

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
        """Time a stage; the body fills ``info`` (rows, skipped, rate) for its summary line."""
        info: dict[str, Any] = {}
        t0 = time.time()
        yield info
        seconds = time.time() - t0
        self.timings[f"round={round}/{name}"] = seconds
        (self.skipped if info.get("skipped") else self.ran).append(f"round={round}/{name}")
        self.records.append({"round": round, "stage": name, "seconds": round_(seconds, 2),
                             "skipped": bool(info.get("skipped")), "rows": info.get("rows"), "rate": info.get("rate")})
        if info.get("skipped"):
            self.log(f"[round {round}] {name}: already done ({info.get('rows', '?')} rows), skipped")
        else:
            extra = f", {info['rate']}" if info.get("rate") else ""
            self.log(f"[round {round}] {name}: {info.get('rows', 0):,} rows in {seconds:.1f}s{extra}")


def config_hash(recipe: Recipe, *keys: str, **extra: Any) -> str:
    """Hash of the recipe keys a stage depends on, plus stage-specific values."""
    data = recipe.to_dict()
    picked: dict[str, Any] = {}
    for key in keys:
        value: Any = data
        for part in key.split("."):
            value = value[part]
        picked[key] = value
    picked.update(extra)
    return fingerprint(picked)
