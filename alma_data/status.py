"""Where a run stands: each round's tables and checkpoints as done, partial or missing."""

from __future__ import annotations

from dataclasses import dataclass

from alma_data.config import recipe_from_dict
from alma_data.plan import round_stages
from alma_data.errors import StoreError
from alma_data.store import Store
from alma_data.store.integrity import check_checkpoint, check_table, repair_command


@dataclass
class Item:
    round: int
    kind: str
    name: str
    state: str      # done | stale | damaged | partial | missing
    detail: str
    damage: list = None  # for a damaged one: what the cheap check found (integrity.Damage)
    stage: str = ""
    memory: dict = None  # the stage's own peak memory when a build last ran it (builds.jsonl)


def run_status(store: Store) -> tuple[dict, list[Item]]:
    info = store.read_run()
    recipe = recipe_from_dict(info["recipe"])
    built = store.rounds_present()
    last = max([recipe.rounds + 1] + built)
    items = []
    ran = last_runs(store)
    for r in range(1, last + 1):
        # The stages a build of round r runs, so what status shows is what build runs.
        for stage in round_stages(recipe, r):
            item = _item(store, r, stage.kind, stage.output)
            if item.state == "done" and not _current(store, recipe, stage):
                item.state, item.detail = "stale", item.detail + "; made under another configuration, the next build redoes it"
            item.stage, item.memory = stage.name, ran.get((r, stage.name))
            items.append(item)
    _lost_manifests(store, items)
    return info, items


def _lost_manifests(store: Store, items: list[Item]) -> None:
    """A table or checkpoint without its manifest is unfinished to a build, but where a finished
    one was built or made with it, it is damage, as ``verify`` says: what stands on it stands on
    nothing, and a build of its round alone would not redo what was built from it."""
    from alma_data.store.integrity import missing_checkpoints, missing_inputs

    lost: dict[str, object] = {}
    for it in items:
        if it.state not in ("done", "stale"):
            continue
        try:
            m = store.checkpoint_manifest(it.round, it.name) if it.kind == "checkpoint" else store.manifest(it.round, it.name)
        except Exception:  # noqa: BLE001 - an unreadable manifest is the cheap check's to report
            continue
        for d in (missing_inputs(store, m) + missing_checkpoints(store, m)) if m else []:
            lost.setdefault(str(d.where), d)
    for it in items:
        if it.state not in ("missing", "partial"):
            continue
        tail = f"round={it.round}/" + ("checkpoints/" if it.kind == "checkpoint" else "") + f"{it.name}/_manifest.json"
        found = [d for where, d in lost.items() if where.endswith(tail)]
        if found:
            it.state, it.detail, it.damage = "damaged", "its manifest is gone", found[:1]


def last_runs(store: Store) -> dict[tuple[int, str], dict]:
    """Each stage's record (``builds.jsonl``) from the last build that ran it, not skipped it:
    its seconds and its own peak memory."""
    out: dict[tuple[int, str], dict] = {}
    for build in store.read_jsonl("builds.jsonl"):
        for rec in build.get("stages") or []:
            if isinstance(rec, dict) and not rec.get("skipped") and "round" in rec and "stage" in rec:
                out[(rec["round"], rec["stage"])] = rec
    return out


def memory_text(rec: dict | None) -> str:
    """``peak 812 MiB`` (``+ 1,530 MiB in its processes`` where it started some), or nothing for
    a stage no build recorded a peak of (built before peaks were recorded)."""
    if not rec or rec.get("peak_memory_mib") is None:
        return ""
    children = rec.get("children_peak_memory_mib")
    return f"peak {rec['peak_memory_mib']:,} MiB" + (f" + {children:,} MiB in its processes" if children else "")


def _current(store: Store, recipe, stage) -> bool:
    """What the runner checks before it skips a stage: the manifest records this stage's
    configuration hash and its inputs' hashes (an input not finished: not current)."""
    try:
        h = stage.config_hash(recipe, store)
        inputs = {str(ref): store.input_hash(ref) for ref in stage.inputs}
    except StoreError:
        return False
    m = (store.checkpoint_manifest(stage.round, stage.output) if stage.kind == "checkpoint"
         else store.manifest(stage.round, stage.output)) or {}
    return m.get("config_hash") == h and m.get("inputs") == inputs


def _item(store: Store, r: int, kind: str, name: str) -> Item:
    # The cheap check only (sizes, footers, files touched since): `alma-data verify` hashes all.
    damage = check_checkpoint(store, r, name) if kind == "checkpoint" else check_table(store, r, name)
    if damage:
        return Item(r, kind, name, "damaged", f"{len(damage)} damaged file{'s' if len(damage) > 1 else ''}", damage)
    if kind == "checkpoint":
        m = store.checkpoint_manifest(r, name)
        if m is not None:
            t = m.get("training", {})
            return Item(r, kind, name, "done", f"{t.get('examples', '?')} examples, {t.get('steps', '?')} steps")
        tmp = store.checkpoint_staging(r, name)
        return Item(r, kind, name, "partial" if tmp.exists() else "missing",
                    "training was interrupted; it restarts" if tmp.exists() else "")
    m = store.manifest(r, name)
    if m is not None:
        return Item(r, kind, name, "done", f"{m['rows']:,} rows in {len(m['shards'])} shards")
    shards = store.shard_names(r, name)
    if not shards:
        return Item(r, kind, name, "missing", "")
    expected = (store.progress(r, name) or {}).get("expected_shards")
    return Item(r, kind, name, "partial", f"{len(shards)} of {expected if expected else '?'} shards written")


def format_status(store: Store) -> tuple[str, bool]:
    """The status text, and whether it reports damage (``alma-data status`` then exits 1)."""
    info, items = run_status(store)
    recipe = info["recipe"]
    lines = [f"run {store.run}  ({store.where()})",
             f"recipe {recipe.get('name')}  fingerprint {info['fingerprint']}  model {recipe.get('model')}", ""]
    current = None
    for it in items:
        if it.round != current:
            current = it.round
            states = {i.state for i in items if i.round == it.round}
            head = ("damaged" if "damaged" in states else "done" if states == {"done"}
                    else "missing" if states == {"missing"} else "partial")
            lines.append(f"round {it.round}: {head}")
        mark = {"done": "ok", "stale": "~~", "damaged": "!!", "partial": "..", "missing": "--"}[it.state]
        peak = memory_text(it.memory) if it.state in ("done", "stale") else ""
        lines.append(f"  [{mark}] {it.kind:<10} {it.name:<18} {it.state:<8} {it.detail}" + (f"; {peak}" if peak else ""))
        lines += [f"         {d}" for d in it.damage or []]
    damaged = [i for i in items if i.state == "damaged"]
    todo = [i for i in items if i.state != "done"]
    if damaged:
        lines += ["", f"damaged: {', '.join(f'round={i.round}/' + ('checkpoints/' if i.kind == 'checkpoint' else '') + i.name for i in damaged)}. Nothing reads them until "
                      f"they are repaired; a build writes again exactly what is damaged and what was built from it: "
                      f"{repair_command(store)}   (alma-data verify checks every file's sha256)"]
    elif todo:
        first = todo[0]
        lines += ["", f"next: round {first.round}, {first.kind} {first.name} ({first.state}). "
                      f"Resume with: alma-data build round={first.round} {store.cli_args()}"]
    else:
        lines += ["", "every round of the recipe is built"]
    lines.append("(sizes, times, row counts and listings checked, files not hashed: alma-data verify hashes every file)")
    return "\n".join(lines), bool(damaged)
