"""Does the store still hold what its manifests recorded?

Two checks, over a local folder or a bucket alike:

- the cheap one (:func:`check_table`, :func:`check_checkpoint`), run whenever a stage or a
  query opens a table and before an engine or trainer loads a checkpoint: the files a
  manifest lists are there with the recorded sizes, and each shard's Parquet footer holds
  its recorded row count. A file whose modification time moved since it was recorded is
  also hashed (only that one), so a rewrite or an edit in place is caught without hashing
  the files nobody touched; a change that leaves size and time alone (bit rot) needs
- the full one (:func:`verify_run`, ``alma-data verify``): the sha256 of every shard and
  checkpoint file against its manifest.

A build repairs what either finds (:func:`quarantine_table`, :func:`quarantine_checkpoint`):
the damaged shards, or a whole table or checkpoint whose manifest is unreadable, are
removed, so the stage that wrote them writes them again as it resumes any stage.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from typing import TYPE_CHECKING

from alma_data.errors import StoreError
from alma_data.store.files import DEFAULT_RUNS_DIR, MANIFEST, SHARD_RE, ManifestError, join

if TYPE_CHECKING:
    from alma_data.store.layout import RunFiles

# Modification times are compared to this many seconds: object stores keep whole seconds or
# milliseconds, and a float's last digits may differ between the APIs that report them.
MTIME_SLACK = 1e-3
BLOCK = 1 << 20


@dataclass(frozen=True)
class Damage:
    """One damaged file, as users name it, and what is wrong with it."""

    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


class DamageError(StoreError):
    """A table or checkpoint does not hold what its manifest recorded; nothing may read it."""


def repair_command(store: RunFiles) -> str:
    where = "" if str(store.loc.given).rstrip("/") == DEFAULT_RUNS_DIR else f" runs_dir={store.loc.given}"
    rounds = store.rounds_present() or [1]
    return f"alma-data build round={max(rounds)} run={store.run}{where}"


def describe(damage: list[Damage], limit: int = 5) -> str:
    text = "; ".join(str(d) for d in damage[:limit])
    return text + (f"; and {len(damage) - limit} more" if len(damage) > limit else "")


# -- cheap checks ------------------------------------------------------------------------------
_hashes: dict[tuple[str, int, float], str] = {}


def _sha256(store: RunFiles, path: str, progress=None) -> str:
    import hashlib

    h = hashlib.sha256()
    with store.arrow_fs.open_input_stream(path) as f:
        while block := f.read(BLOCK):
            h.update(block)
            if progress is not None:
                progress(len(block))
    return h.hexdigest()


def _changed_content(store: RunFiles, path: str, entry: dict, sha: str | None) -> bool:
    """For a file whose modification time moved: do its bytes differ from the recorded ones?"""
    if not sha:
        return False
    key = (path, entry["size"], entry["mtime"])
    if key not in _hashes:
        _hashes[key] = _sha256(store, path)
    return _hashes[key] != sha


def _check_file(store: RunFiles, path: str, entry: dict | None, recorded: dict, moved: list | None = None) -> str | None:
    """What is wrong with one listed file (None: nothing the cheap check sees). A file whose
    time moved but whose bytes are the recorded ones goes into ``moved``."""
    if entry is None:
        return "missing"
    size = recorded.get("bytes")
    if size is not None and entry["size"] != size:
        return f"{entry['size']:,} bytes where the manifest recorded {size:,} (cut short or rewritten)"
    mtime = recorded.get("mtime")
    if mtime is not None and entry["mtime"] is not None and abs(entry["mtime"] - mtime) > MTIME_SLACK:
        if _changed_content(store, path, entry, recorded.get("sha256")):
            return "changed after it was written: its sha256 is not the one the manifest recorded"
        if moved is not None:
            moved.append((recorded["file"], entry["mtime"]))
    return None


def _footer_problem(store: RunFiles, path: str, shard: dict) -> str | None:
    try:
        rows = _footer_rows(store, path)
    except (pa.ArrowInvalid, OSError) as exc:
        return f"not a readable Parquet file ({str(exc).splitlines()[0]})"
    return f"{rows:,} rows where the manifest recorded {shard['rows']:,}" if rows != shard.get("rows") else None


def _footer_rows(store: RunFiles, path: str) -> int:
    with store.arrow_fs.open_input_file(path) as f:
        return pq.read_metadata(f).num_rows


def check_table(store: RunFiles, round: int, table: str, manifest: dict | None = None,
                moved: list | None = None) -> list[Damage]:
    """The cheap check of a finished table (an unfinished one has nothing to check: []).
    Shards touched but unchanged (a copy that did not keep times) go into ``moved``."""
    folder = store.table_path(round, table)
    if manifest is None:
        try:
            manifest = store.manifest(round, table)
        except ManifestError as exc:
            return [Damage(store.url(exc.path), exc.problem)]
        if manifest is None:
            return []
    entries = store.entries(folder)
    damage = claim_damage(store, folder, manifest)
    flagged = flagged_by_verify(store)
    for shard in manifest["shards"]:
        path = join(folder, shard["file"])
        problem = _check_file(store, path, entries.get(shard["file"]), shard, moved)
        if problem is None and _still_flagged(flagged, store.url(path), entries.get(shard["file"])):
            problem = ("hashing (alma-data verify, or a query that could not read it) found its sha256 differs "
                       "from the one the manifest recorded")
        if problem is None:
            problem = _footer_problem(store, path, shard)
        if problem:
            damage.append(Damage(store.url(path), problem))
    return damage


def claim_damage(store: RunFiles, folder: str, manifest: dict) -> list[Damage]:
    """What a table's manifest claims beyond each listed shard: its total is the sum of its
    shards' rows, every shard in the folder is listed (a stray one is never read, and a build
    moves it aside instead of adopting it), and a listed shard is a file, not a folder."""
    damage = []
    listed = {sh["file"] for sh in manifest["shards"]}
    total = sum(int(sh.get("rows", 0)) for sh in manifest["shards"])
    if manifest.get("rows") is not None and manifest["rows"] != total:
        damage.append(Damage(store.url(join(folder, MANIFEST)),
                             f"records {manifest['rows']:,} rows but its shards list {total:,}"))
    for name in store.names(folder):
        if SHARD_RE.match(name) and name not in listed:
            damage.append(Damage(store.url(join(folder, name)), "a shard the manifest does not list (stray: never read)"))
    for name in store.names(folder, kind="directory"):
        if name in listed:
            damage.append(Damage(store.url(join(folder, name)), "a folder where the manifest lists a shard file"))
    return damage


# -- what alma-data verify found (it hashes; the cheap check does not) ----------------------------
FLAGS = "_verify_damage.json"


def flagged_by_verify(store: RunFiles) -> dict[str, list]:
    """Files the last ``alma-data verify`` found damaged: url -> [size, mtime] they had then."""
    try:
        data = store.read_json_at(join(store.path, FLAGS))
    except ManifestError:
        return {}
    return data if isinstance(data, dict) else {}


def _still_flagged(flagged: dict, url: str, entry: dict | None) -> bool:
    """A file verify flagged, not written again since (same size and time)."""
    seen = flagged.get(url)
    return bool(seen and entry and entry["size"] == seen[0] and entry["mtime"] == seen[1])


def record_verify(store: RunFiles, damage: list[Damage], keep: bool = False) -> None:
    """Keep what verify found, so the build it names treats exactly that as not done.
    ``keep``: add to what an earlier verify recorded (a check of some tables only) instead of
    replacing it (``alma-data verify``, which hashed everything)."""
    path = join(store.path, FLAGS)
    hashed = [d for d in damage if "sha256" in d.problem]
    if not hashed:
        if store.isfile(path) and not keep:
            store.fs.rm_file(path)
        return
    flags = dict(flagged_by_verify(store)) if keep else {}
    for d in hashed:
        folder, name = d.where.rsplit("/", 1)
        bare = folder.split("://", 1)[1] if store.remote else folder
        entry = store.entries(bare).get(name)
        if entry:
            flags[d.where] = [entry["size"], entry["mtime"]]
    store.write_json_at(path, flags)


def require_checkpoint_hashed(store: RunFiles, round: int, name: str) -> None:
    """Before a command loads a checkpoint for use (judge, eval, training): every file's sha256
    against its manifest, so a damaged model never answers or scores."""
    key = ("checkpoint-hashed", store.where(), round, name)
    if key in store.intact:
        return
    folder = store.checkpoint_path(round, name)
    damage = check_checkpoint(store, round, name)
    if not damage:
        manifest = store.checkpoint_manifest(round, name) or {"files": []}
        entries = store.tree(folder)
        for f in manifest["files"]:
            path = join(folder, f["file"])
            entry = entries[f["file"]]
            if f.get("sha256") and _hash_once(store, path, entry) != f["sha256"]:
                damage.append(Damage(store.url(path), "sha256 differs from the one the manifest recorded"))
    if damage:
        raise DamageError(f"round={round}/checkpoints/{name} of run {store.run!r} is damaged: {describe(damage)}. "
                          f"Nothing loads it until it is repaired; repair it with: {repair_command(store)}")
    store.intact.add(key)


def _hash_once(store: RunFiles, path: str, entry: dict) -> str:
    key = (path, entry["size"], entry["mtime"])
    if key not in _hashes:
        _hashes[key] = _sha256(store, path)
    return _hashes[key]


def check_checkpoint(store: RunFiles, round: int, name: str) -> list[Damage]:
    """The cheap check of a finished checkpoint: its files there, with their recorded sizes."""
    folder = store.checkpoint_path(round, name)
    try:
        manifest = store.checkpoint_manifest(round, name)
    except ManifestError as exc:
        return [Damage(store.url(exc.path), exc.problem)]
    if manifest is None:
        return []
    entries = store.tree(folder)
    damage = []
    for f in manifest["files"]:
        path = join(folder, f["file"])
        problem = _check_file(store, path, entries.get(f["file"]), f)
        if problem:
            damage.append(Damage(store.url(path), problem))
    return damage


def require_table(store: RunFiles, round: int, table: str, manifest: dict) -> None:
    """Raise :class:`DamageError` unless the table passes the cheap check (once per process
    for a given manifest: the build that checked a table reads it many times)."""
    key = ("table", store.where(), round, table, manifest.get("hash"), manifest.get("finished"))
    if key in store.intact:
        return
    damage = check_table(store, round, table, manifest)
    if damage:
        raise DamageError(f"round={round}/{table} of run {store.run!r} is damaged: {describe(damage)}. "
                          f"Nothing reads it until it is repaired; repair it with: {repair_command(store)}")
    store.intact.add(key)


# -- repair ------------------------------------------------------------------------------------
def restamp_table(store: RunFiles, round: int, table: str, moved: list[tuple[str, float]]) -> None:
    """Record the new times of shards found unchanged by their hash (a run copied without its
    files' times), so later reads need not hash them again. Only a build does this: it holds
    the run's lock, and a manifest's hash does not cover the times."""
    manifest = store.manifest(round, table)
    times = dict(moved)
    for shard in manifest["shards"]:
        if shard["file"] in times:
            shard["mtime"] = times[shard["file"]]
    store.write_json_at(join(store.table_path(round, table), MANIFEST), manifest)


def quarantine_table(store: RunFiles, round: int, table: str, damage: list[Damage]) -> None:
    """Remove what the stage must write again: the damaged shards and the manifest (so the
    stage runs and resumes from the intact shards), or, when the manifest itself is
    unreadable, every shard (nothing vouches for them any more)."""
    folder = store.table_path(round, table)
    manifest_url = store.url(join(folder, MANIFEST))
    names = store.names(folder)
    if any(d.where == manifest_url for d in damage):
        doomed = [n for n in names if SHARD_RE.match(n)]
    else:
        damaged = {d.where for d in damage}
        doomed = [n for n in names if store.url(join(folder, n)) in damaged]
    stray = {d.where for d in damage if "stray" in d.problem or "a folder where" in d.problem}
    doomed += [n for n in store.names(folder, kind="directory") if store.url(join(folder, n)) in stray]
    for name in sorted(set(doomed)):
        move_aside(store, round, table, name)
    if MANIFEST in names:
        store.fs.rm_file(join(folder, MANIFEST))


def move_aside(store: RunFiles, round: int, table: str, name: str) -> str:
    """Move a file (or folder) out of a table's folder into ``<run>/quarantine/``, where no
    reader looks: what a build found damaged or stray is kept for a person to look at, never
    adopted and never silently deleted. On an object store it is removed."""
    import os

    src = join(store.table_path(round, table), name)
    if store.remote:
        store.fs.rm(src, recursive=True)
        return src
    dest_dir = join(store.path, "quarantine", f"round={round}", table)
    os.makedirs(dest_dir, exist_ok=True)
    dest = join(dest_dir, f"{name}.{time.time_ns()}")
    os.replace(src, dest)
    return dest


def quarantine_checkpoint(store: RunFiles, round: int, name: str) -> None:
    """A damaged checkpoint is trained again: without its manifest it is not finished, and
    committing the new one replaces the whole folder."""
    path = join(store.checkpoint_path(round, name), MANIFEST)
    if store.fs.exists(path):
        store.fs.rm_file(path)


# -- the full check ----------------------------------------------------------------------------
@dataclass
class VerifyReport:
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    tables: int = 0
    checkpoints: int = 0
    unchecked: int = 0
    """Files whose manifest records no sha256 (checkpoints saved by older versions): size only."""
    damage: list[Damage] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)

    def summary(self) -> str:
        state = f"{len(self.damage)} damaged" if self.damage else "all intact"
        extra = f", {self.unchecked} without a recorded sha256 (sizes checked)" if self.unchecked else ""
        return (f"verified {self.files:,} files of {self.tables} tables and {self.checkpoints} checkpoints, "
                f"{self.bytes / 1e6:,.1f} MB in {self.seconds:.1f}s ({self.mb_per_s:,.0f} MB/s): {state}{extra}")


def _manifest_paths(store: RunFiles) -> tuple[list[str], list[str]]:
    root = store.path
    tables = [p for p in store.fs.glob(join(root, "round=*", "*", MANIFEST)) if p.rstrip("/").split("/")[-2] != "checkpoints"]
    checkpoints = store.fs.glob(join(root, "round=*", "checkpoints", "*", MANIFEST))
    return sorted(tables), sorted(checkpoints)


def missing_inputs(store: RunFiles, manifest: dict) -> list[Damage]:
    """A finished table or checkpoint was built from tables that must still have their
    manifests: one that lost it is damage (its rows vanish from every query otherwise)."""
    import re

    damage = []
    for ref in manifest.get("inputs") or {}:
        m = re.fullmatch(r"round=(\d+)/([\w.-]+)", str(ref))
        if not m:
            continue
        folder = store.table_path(int(m.group(1)), m.group(2))
        if not store.isfile(join(folder, MANIFEST)):
            damage.append(Damage(store.url(join(folder, MANIFEST)),
                                 f"missing, though {manifest.get('table') or 'a later stage'} of round "
                                 f"{manifest.get('round', '?')} was built from it"))
    return damage


def checkpoints_used(manifest: dict) -> set[tuple[int, str]]:
    """(round, name) of every checkpoint of the run a manifest says it was made with: the
    judge of judgments (``judge``: ``round=1/judge``), a judge evaluation's checkpoint, the
    checkpoints responses were sampled from, the checkpoint a training started from."""
    import re

    found: set[tuple[int, str]] = set()
    values = [manifest.get("judge_checkpoint"), manifest.get("started_from"),
              *((manifest.get("checkpoints") or {}).values() if isinstance(manifest.get("checkpoints"), dict) else [])]
    for v in values:
        if isinstance(v, str) and (m := re.search(r"round=(\d+)/checkpoints/([\w.-]+)/?$", v)):
            found.add((int(m.group(1)), m.group(2)))
    judge = manifest.get("judge")
    if isinstance(judge, str) and (m := re.fullmatch(r"round=(\d+)/([\w.-]+)", judge)):
        found.add((int(m.group(1)), m.group(2)))
    return found


def missing_checkpoints(store: RunFiles, manifest: dict) -> list[Damage]:
    """A checkpoint a finished table or checkpoint was made with must still have its manifest
    (without it the checkpoint is unfinished to every command, and what was made with it
    stands on nothing)."""
    damage = []
    for round, name in sorted(checkpoints_used(manifest)):
        folder = join(store.path, f"round={round}", "checkpoints", name)
        if not store.isfile(join(folder, MANIFEST)):
            what = manifest.get("table") or manifest.get("checkpoint") or "a later stage"
            damage.append(Damage(store.url(join(folder, MANIFEST)),
                                 f"missing, though {what} of round {manifest.get('round', '?')} was made with it"))
    return damage


def verify_run(store: RunFiles, threads: int = 4, progress: bool = True) -> VerifyReport:
    """sha256 of every file every finished table and checkpoint of the run lists, against
    the manifest (a missing file, a wrong size or an unreadable manifest is damage too)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    report = VerifyReport()
    jobs: list[tuple[str, str, int]] = []  # (path, sha256, bytes)
    table_manifests, checkpoint_manifests = _manifest_paths(store)
    for kind, paths in (("table", table_manifests), ("checkpoint", checkpoint_manifests)):
        for mpath in paths:
            folder = mpath.rstrip("/").rsplit("/", 1)[0]
            try:
                manifest = store.read_manifest_at(mpath, "files" if kind == "checkpoint" else "shards")
            except ManifestError as exc:
                report.damage.append(Damage(store.url(exc.path), exc.problem))
                continue
            report.damage += missing_inputs(store, manifest) + missing_checkpoints(store, manifest)
            if kind == "table":
                report.tables += 1
                listed, entries = manifest["shards"], store.entries(folder)
                report.damage += claim_damage(store, folder, manifest)
            else:
                report.checkpoints += 1
                listed, entries = manifest["files"], store.tree(folder)
            for f in listed:
                path = join(folder, f["file"])
                entry = entries.get(f["file"])
                report.files += 1
                if entry is None:
                    report.damage.append(Damage(store.url(path), "missing"))
                elif f.get("bytes") is not None and entry["size"] != f["bytes"]:
                    report.damage.append(Damage(store.url(path), f"{entry['size']:,} bytes where the manifest "
                                                                 f"recorded {f['bytes']:,} (cut short or rewritten)"))
                elif kind == "table" and (problem := _footer_problem(store, path, f)):
                    report.damage.append(Damage(store.url(path), problem))
                elif not f.get("sha256"):
                    report.unchecked += 1
                    report.bytes += entry["size"]
                else:
                    jobs.append((path, f["sha256"], entry["size"]))
    total = sum(size for _, _, size in jobs)
    lock = threading.Lock()
    with tqdm(total=total, desc="verifying", unit="B", unit_scale=True, disable=not progress,
              dynamic_ncols=True) as bar:
        def advance(n: int) -> None:
            with lock:
                bar.update(n)

        def one(job: tuple[str, str, int]) -> Damage | None:
            path, sha, _ = job
            try:
                got = _sha256(store, path, advance)
            except OSError as exc:
                return Damage(store.url(path), f"could not be read ({exc})")
            return None if got == sha else Damage(store.url(path), "sha256 differs from the one the manifest recorded")

        # Threads: hashlib and pyarrow's reads let go of the GIL, and an object store's
        # latency hides behind several reads in flight.
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for found in pool.map(one, jobs):
                if found:
                    report.damage.append(found)
    report.bytes += total
    report.seconds = time.perf_counter() - t0
    seen: set[str] = set()  # a lost manifest is named once, however many stages were built from it
    report.damage = [d for d in sorted(set(report.damage), key=lambda d: (d.where, d.problem))
                     if not (d.problem.startswith("missing, though") and (d.where in seen or seen.add(d.where)))]
    return report


def hash_tables(store: RunFiles, tables: list[tuple[int, str]]) -> list[Damage]:
    """sha256 of every shard the manifests of ``tables`` ((round, table) pairs) list: what a
    query that could not read a table runs to name the shard at fault (bytes changed with the
    size and time kept, which the cheap check cannot see). What it finds is recorded as
    ``alma-data verify`` records it, so the repair it names redoes exactly that."""
    damage: list[Damage] = []
    for round, table in tables:
        damage += check_table(store, round, table)
        try:
            manifest = store.manifest(round, table)
        except ManifestError:
            continue
        folder = store.table_path(round, table)
        entries = store.entries(folder)
        for shard in (manifest or {}).get("shards", []):
            path = join(folder, shard["file"])
            if not (shard.get("sha256") and shard["file"] in entries):
                continue
            try:
                same = _sha256(store, path) == shard["sha256"]
            except OSError as exc:
                damage.append(Damage(store.url(path), f"could not be read ({exc})"))
                continue
            if not same:
                damage.append(Damage(store.url(path), "sha256 differs from the one the manifest recorded"))
    damage = sorted(set(damage), key=lambda d: (d.where, d.problem))
    record_verify(store, damage, keep=True)
    return damage
