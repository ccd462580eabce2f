"""Bad input, as a new user brings it, ends in one line that names the file, row or key and
the fix, with an exit status that says what happened, and changes nothing already written.

Every case runs the real command in a subprocess against one real tiny round-1 run (built
once for the module). A case that must not write checks a hash of the whole run folder
before and after; the build lock's holder line is the one file a refused build may touch.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT

RUN = "base"


def env() -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alma_data", *args], capture_output=True, text=True,
                          timeout=timeout, env=env(), cwd=ROOT)


def folder_hash(folder: Path) -> str:
    """Every file's path and bytes (the build lock's holder line aside)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.name == ".build.lock":
            continue
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The error line a refusal prints: the last of stderr, after at most a build's progress
    lines (its opening line, where its log file is, one line a stage), and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("alma-data: "), proc.stderr[-3000:]
    assert all(line.startswith(("building run", "log: ", "[round ")) for line in lines[:-1]), proc.stderr[-3000:]
    return lines[-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A finished tiny round-1 run (one m1 checkpoint, one step a training, to be quick). It is
    first tried with a refused seed file: the rerun with the file fixed (here: the bundled seeds)
    is a new run to the build, not "another recipe"."""
    runs = tmp_path_factory.mktemp("runs")
    bad = runs.parent / "latin1.jsonl"
    bad.write_bytes('{"prompt": "Caf\u00e9?", "response": "Oui."}\n'.encode("latin-1"))
    refused = cli("build", "round=1", "recipe=tiny", f"runs_dir={runs}", f"run={RUN}", f"seeds.sft={bad}")
    assert refused.returncode == 2 and "latin1.jsonl:1" in one_line(refused)
    built = cli("build", "round=1", "recipe=tiny", f"runs_dir={runs}", f"run={RUN}", "train.m1_seeds=[1]",
                "train.max_steps=1", "judge.max_steps=1", "eval.max_new_tokens=8", "--quiet", timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    return runs


@dataclass
class Case:
    id: str
    args: list[str]
    words: list[str]
    code: int = 2
    files: dict[str, bytes] = field(default_factory=dict)
    """Files written into the case's folder first; ``{dir}`` in args names that folder."""


def _jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def _parquet(rows: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


GOOD_JUDGE = [{"prompt": f"Question {i}?", "response": f"Answer {i}.", "score": i % 11, "group": f"g{i % 4}"}
              for i in range(8)]
BUILD = ["build", "round=1", "runs_dir={runs}", f"run={RUN}"]


def build_to(round_: int) -> list[str]:
    return ["build", f"round={round_}", *BUILD[2:]]

FORCE = BUILD + ["--force"]

RECIPE_CASES = [
    Case("responses.n=0", build_to(2) + ["responses.n=0"], ["responses.n=0", "at least 1"]),
    Case("responses.n=-3", build_to(2) + ["responses.n=-3"], ["responses.n=-3", "at least 1"]),
    Case("prompts.k=0", build_to(2) + ["prompts.k=0"], ["prompts.k=0", "at least 1"]),
    Case("store.shard_rows=0", BUILD + ["store.shard_rows=0"], ["store.shard_rows=0", "at least 1"]),
    Case("seeds.eval_prompts=-1", BUILD + ["seeds.eval_prompts=-1"], ["seeds.eval_prompts=-1", "0 or more"]),
    # the issue's case: the tiny recipe's two m1 checkpoints and round 3's previous model need three weights
    Case("checkpoint_mix-round3", ["build", "round=3", "recipe=tiny", "runs_dir={runs}", "run=never",
                                   "responses.checkpoint_mix=[1,1]"],
         ["responses.checkpoint_mix=[1, 1]", "3 checkpoints", "checkpoint_mix=[1,1,1]"]),
    Case("checkpoint_mix-on-the-run", build_to(3) + ["responses.checkpoint_mix=[1]"],
         ["responses.checkpoint_mix=[1]", "2 checkpoints", "checkpoint_mix=[1,1]"]),
    Case("checkpoint_mix-all-zero", build_to(2) + ["responses.checkpoint_mix=[0,1]"],
         ["checkpoint_mix", "sum to 0"]),
    Case("shots_min>shots_max", BUILD + ["prompts.shots_min=6", "prompts.shots_max=4"],
         ["prompts.shots_min=6", "prompts.shots_max=4"]),
    Case("train.max_steps=-2", BUILD + ["train.max_steps=-2"], ["train.max_steps=-2", "-1 (run the epochs)"]),
    Case("judge.max_steps=0", BUILD + ["judge.max_steps=0"], ["judge.max_steps=0", "-1 (run the epochs)"]),
    Case("learning_rate=nan", BUILD + ["train.learning_rate=nan"], ["train.learning_rate=nan", "above 0"]),
    Case("top_p=1.5", BUILD + ["responses.top_p=1.5"], ["responses.top_p=1.5", "at most 1"]),
    Case("heldout_fraction=1", BUILD + ["seeds.judge_heldout_fraction=1"], ["seeds.judge_heldout_fraction=1.0"]),
    Case("eval_prompts>=max_sft", BUILD + ["seeds.max_sft=4"], ["seeds.eval_prompts=4", "seeds.max_sft=4"]),
    Case("m1_seeds-repeated", BUILD + ["train.m1_seeds=[3,3]"], ["train.m1_seeds=[3, 3]", "distinct"]),
    Case("m1_seeds-empty", BUILD + ["train.m1_seeds=[]"], ["train.m1_seeds is empty"]),
    Case("candidates<k", BUILD + ["prompts.candidates=2", "prompts.k=4"], ["prompts.candidates=2", "prompts.k=4"]),
    Case("dpo-with-one-response", BUILD + ["train.trainer=dpo", "responses.n=1"], ["responses.n=1", "pair"]),
    Case("new-run-recipe-value", ["build", "round=1", "recipe=tiny", "runs_dir={runs}", "run=never",
                                  "judge.scale=0"], ["judge.scale=0"]),
]

SEED_CASES = [
    Case("non-utf8-line3", FORCE + ["seeds.sft={dir}/sft.jsonl"], ["sft.jsonl:3", "not UTF-8", "0xe9"],
         files={"sft.jsonl": _jsonl({"prompt": "a b c", "response": "ok"}, {"prompt": "d e f", "response": "ok"})
                + '{"prompt": "caf\u00e9", "response": "ok"}\n'.encode("latin-1")}),
    Case("gzip-named-jsonl", FORCE + ["seeds.sft={dir}/sft.jsonl"], ["sft.jsonl", "gzip-compressed", "gunzip"],
         files={"sft.jsonl": gzip.compress(_jsonl({"prompt": "a", "response": "b"}))}),
    Case("text-named-parquet", FORCE + ["seeds.judge={dir}/judge.parquet"],
         ["judge.parquet", "not a readable Parquet file", "name it .jsonl"],
         files={"judge.parquet": _jsonl(*GOOD_JUDGE)}),
    Case("score-nan", FORCE + ["seeds.judge={dir}/judge.jsonl"], ["judge.jsonl:3", "'score'", "got nan", "0..10"],
         files={"judge.jsonl": _jsonl(*GOOD_JUDGE[:2], '{"prompt": "p?", "response": "r.", "score": NaN}')}),
    Case("score-infinity", FORCE + ["seeds.judge={dir}/judge.jsonl"], ["judge.jsonl:2", "'score'", "got inf"],
         files={"judge.jsonl": _jsonl(GOOD_JUDGE[0], '{"prompt": "p?", "response": "r.", "score": Infinity}')}),
    Case("score-nan-parquet", FORCE + ["seeds.judge={dir}/judge.parquet"], ["judge.parquet row 1", "nan"],
         files={"judge.parquet": _parquet([{**GOOD_JUDGE[0], "score": 3.0},
                                           {**GOOD_JUDGE[1], "score": float("nan")}])}),
    Case("sft-all-one-prompt", FORCE + ["seeds.sft={dir}/sft.jsonl"],
         ["sft.jsonl", "1 distinct prompt", "seeds.eval_prompts"],
         files={"sft.jsonl": _jsonl(*[{"prompt": "The one prompt", "response": f"answer {i}"} for i in range(6)])}),
    Case("judge-one-group", FORCE + ["seeds.judge={dir}/judge.jsonl"],
         ["judge.jsonl", "1 prompt group", "seeds.judge_heldout_fraction=0"],
         files={"judge.jsonl": _jsonl(*[{**j, "group": "same"} for j in GOOD_JUDGE])}),
    Case("seed-file-missing-column", FORCE + ["seeds.judge={dir}/judge.jsonl"], ["judge.jsonl:1", "'score'"],
         files={"judge.jsonl": _jsonl({"prompt": "p?", "response": "r."})}),
]

RUNS_DIR_CASES = [
    Case("runs_dir-missing-query", ["query", "runs_dir={dir}/nowhere", "select 1"], ["nowhere", "does not exist"]),
    Case("runs_dir-missing-status", ["status", "runs_dir={dir}/nowhere"], ["nowhere", "does not exist"]),
    Case("runs_dir-is-a-file-build", ["build", "round=1", "recipe=tiny", "runs_dir={dir}/file.txt"],
         ["runs_dir=", "file.txt", "is a file, not a folder"], files={"file.txt": b"x"}),
    Case("runs_dir-under-a-file", ["build", "round=1", "recipe=tiny", "runs_dir={dir}/file.txt/runs"],
         ["file.txt", "cannot be made"], files={"file.txt": b"x"}),
    Case("runs_dir-is-a-file-runs", ["runs", "runs_dir={dir}/file.txt"], ["is a file, not a folder"],
         files={"file.txt": b"x"}),
    Case("runs_dir-empty", ["tables", "runs_dir="], ["runs_dir= is empty"]),
]

Q = ["query", "runs_dir={runs}", f"run={RUN}"]
SHARD = "{runs}/" + RUN + "/round=1/sft/part-00000.parquet"
QUERY_CASES = [
    Case("copy-over-a-shard", Q + [f"COPY (select 1 as a) TO '{SHARD}' (FORMAT parquet, USE_TMP_FILE false)"],
         ["COPY", "--out FILE"]),
    Case("copy-over-a-manifest", Q + ["COPY (select 1 as a) TO '{runs}/" + RUN + "/round=1/sft/_manifest.json'"],
         ["COPY", "--out FILE"]),
    Case("copy-elsewhere", Q + ["COPY (select * from sft) TO '{dir}/out.csv'"], ["COPY", "--out FILE"]),
    Case("export-database", Q + ["EXPORT DATABASE '{dir}/exported'"], ["EXPORT", "--out FILE"]),
    Case("attach-a-file", Q + ["ATTACH '{runs}/" + RUN + "/round=1/evil.duckdb' AS evil"],
         ["ATTACH", "alma-data tables"]),
    Case("create-from-a-file", Q + [f"CREATE TABLE t AS SELECT * FROM read_parquet('{SHARD}')"],
         ["opens no file itself", "part-00000.parquet"]),
    Case("read-text", Q + ["select * from read_text('/etc/passwd')"], ["opens no file itself", "/etc/passwd"]),
    Case("read-blob-of-a-shard", Q + [f"select * from read_blob('{SHARD}')"], ["opens no file itself"]),
    Case("read-csv", Q + ["select * from read_csv('/etc/passwd')"], ["opens no file itself"]),
    Case("glob", Q + ["select * from glob('/etc/*')"], ["opens no file itself"]),
    Case("install", Q + ["INSTALL httpfs"], ["INSTALL", "extensions"]),
    Case("load", Q + ["LOAD json"], ["LOAD", "extensions"]),
    Case("set-external-access", Q + ["SET enable_external_access = true"],
         ["enable_external_access", "locked"]),
    Case("reset-lock", Q + ["RESET lock_configuration"], ["lock_configuration", "locked"]),
    Case("set-allowed-paths", Q + ["SET allowed_paths = ['/etc/passwd']"], ["allowed_paths", "locked"]),
    Case("pragma", Q + ["PRAGMA enable_profiling"], ["PRAGMA", "DESCRIBE"]),
    Case("second-statement-writes", Q + ["select 1; COPY (select 2) TO '{dir}/x.csv'"], ["COPY"]),
    Case("out-into-a-missing-folder", Q + ["--format", "csv", "--out", "{dir}/no/such/x.csv", "select 1"],
         ["--out", "no/such", "make it first"]),
    Case("sql-file-missing", Q + ["{dir}/stats.sql"], ["no file", "stats.sql"]),
    Case("sql-file-not-utf8", Q + ["{dir}/latin.sql"], ["latin.sql", "not UTF-8"],
         files={"latin.sql": "select 'caf\u00e9'".encode("latin-1")}),
    Case("out-inside-the-run", Q + ["--format", "csv", "--out", SHARD, "select 1"],
         ["--out", "inside the runs folder"]),
]


def _ids(cases):
    return [c.id for c in cases]


def _fill(args: list[str], runs: Path, folder: Path) -> list[str]:
    return [a.replace("{runs}", str(runs)).replace("{dir}", str(folder)) for a in args]


@pytest.mark.parametrize("case", RECIPE_CASES + SEED_CASES + RUNS_DIR_CASES + QUERY_CASES,
                         ids=_ids(RECIPE_CASES + SEED_CASES + RUNS_DIR_CASES + QUERY_CASES))
def test_bad_input_is_one_line_and_changes_nothing(case: Case, runs: Path, tmp_path: Path):
    for name, data in case.files.items():
        (tmp_path / name).write_bytes(data)
    before = folder_hash(runs)
    proc = cli(*_fill(case.args, runs, tmp_path))
    line = one_line(proc)
    assert proc.returncode == case.code, line
    for word in case.words:
        assert word in line, f"{word!r} not in: {line}"
    assert folder_hash(runs) == before, "the refused command changed the runs folder"
    assert not (runs / "never").exists()
    assert not list(tmp_path.glob("out.csv")) and not (tmp_path / "exported").exists()


def test_what_a_query_may_still_do(runs: Path, tmp_path: Path):
    before = folder_hash(runs)
    q = ["query", f"runs_dir={runs}", f"run={RUN}", "--format", "json"]
    ok = cli(*q, "SET threads = 1; create temp table t as select * from sft; select count(*) as n from t")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == [{"n": 44}]
    described = cli(*q, "describe prompts")
    assert described.returncode == 0 and "round" in described.stdout
    out = tmp_path / "sft.parquet"
    written = cli("query", f"runs_dir={runs}", f"run={RUN}", "--format", "parquet", "--out", str(out),
                  "select * from sft")
    assert written.returncode == 0, written.stderr
    assert pq.read_metadata(out).num_rows == 44
    assert folder_hash(runs) == before


def test_full_disk_is_one_line_that_says_what_to_free(runs: Path, tmp_path: Path):
    # /dev/full answers every write with ENOSPC, as a full disk does.
    query = cli("query", f"runs_dir={runs}", f"run={RUN}", "--format", "csv", "--out", "/dev/full",
                "select * from sft")
    line = one_line(query)
    assert query.returncode == 74 and "no space left" in line and "free space" in line
    copy = tmp_path / "runs"
    import shutil

    shutil.copytree(runs, copy)
    log = copy / RUN / "builds.jsonl"
    log.unlink()
    log.symlink_to("/dev/full")
    before = folder_hash(copy)
    build = cli("build", "round=1", f"runs_dir={copy}", f"run={RUN}")
    assert "Traceback" not in build.stderr, build.stderr[-3000:]
    last = build.stderr.strip().splitlines()[-1]
    assert build.returncode == 74, build.stderr[-3000:]
    assert "no space left" in last and "run the same command again" in last and "goes on" in last
    assert folder_hash(copy) == before


def test_a_full_disk_inside_a_library_is_recognised():
    from alma_data.cli_errors import no_space as _no_space

    class SafetensorError(Exception):  # named as safetensors' own; it carries no errno
        pass

    assert _no_space(SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                     'message: "No space left on device" })')) is not None
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(28, "No space left on device")
    assert _no_space(wrapped) is not None
    assert _no_space(OSError(13, "Permission denied")) is None


@pytest.mark.parametrize("signum,code,how", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["ctrl-c", "sigterm"])
def test_a_stopped_build_says_so_and_how_to_resume(signum, code, how, tmp_path: Path):
    args = ["build", "round=1", "recipe=tiny", f"runs_dir={tmp_path}", "run=stopped"]
    proc = subprocess.Popen([sys.executable, "-m", "alma_data", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env(), cwd=ROOT)
    lines: list[str] = []
    seeds_done = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "[round 1] seed judge annotations" in line:  # the last of the three seed tables
                seeds_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert seeds_done.wait(120), "".join(lines)
    time.sleep(1.0)  # into the first training
    proc.send_signal(signum)
    got = proc.wait(60)
    reader.join(10)
    err = "".join(lines)
    # Under pytest-xdist the build at times printed its Ctrl-C line and then ended by SIGINT
    # itself (-2, which a shell shows as 130 too) instead of exiting 130; cause not yet found.
    assert got == code or (signum == signal.SIGINT and got == -signum and f"stopped by {how}" in err), err
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"alma-data: build stopped by {how}") and "run the same command again" in last
    assert "alma-data build round=1 recipe=tiny" in last
    # What the seed stage finished stays, and the run is not locked: the same command goes on from it.
    assert (tmp_path / "stopped" / "round=1" / "sft" / "_manifest.json").is_file()
    import fcntl

    with open(tmp_path / "stopped" / ".build.lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.parametrize("signum,code,how", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["ctrl-c", "sigterm"])
def test_a_long_query_stops_at_once(signum, code, how, runs: Path):
    # DuckDB holds the main thread while it runs a query; the signal still stops it.
    proc = subprocess.Popen([sys.executable, "-m", "alma_data", "query", f"runs_dir={runs}", f"run={RUN}",
                             "select count(*) from range(1000000000000) a"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env(), cwd=ROOT)
    # Signal once the query runs: importing takes about 3 s of CPU, the query all it can get.
    # A fixed sleep was too short when other work shared the cores (exit 1 instead of 143).
    import psutil

    child, deadline = psutil.Process(proc.pid), time.time() + 120
    while sum(child.cpu_times()[:2]) < 8 and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signum)
    try:
        assert proc.wait(20) == code
    finally:
        proc.kill()
    assert proc.stderr.read().strip() == f"alma-data: query stopped by {how}"


def test_output_into_a_closed_pipe_ends_quietly(runs: Path):
    # alma-data runs | head -3, with the reader gone before a byte is written
    proc = subprocess.Popen([sys.executable, "-m", "alma_data", "runs", f"runs_dir={runs}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env(), cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == ""
    # and through a real head, with more output than a pipe holds
    shell = subprocess.run(["bash", "-c", f"{sys.executable} -m alma_data query runs_dir={runs} run={RUN} --format csv "
                            "'select * from range(300000)' | head -3; echo status ${PIPESTATUS[0]} >&2"],
                           capture_output=True, text=True, env=env(), cwd=ROOT, timeout=120)
    assert shell.stdout.splitlines() == ["range", "0", "1"]
    assert shell.stderr.strip() == "status 141", shell.stderr


def test_a_run_whose_seeds_were_refused_takes_the_fixed_recipe(tmp_path: Path):
    from alma_data.config import load_recipe
    from alma_data.round import check_run
    from alma_data.store import Store

    store = Store(tmp_path, "fresh")
    check_run(store, load_recipe("tiny", {"seeds.sft": str(tmp_path / "bad.jsonl")}))  # then the seeds fail
    check_run(store, load_recipe("tiny"))  # nothing was built: no "another recipe", no --force
    assert store.read_run()["fingerprint"] == load_recipe("tiny").fingerprint()


def test_a_query_over_a_run_in_a_bucket_reads_and_cannot_write(s3_server):
    from alma_data.store import Store, write_table

    uri = s3_server()
    store = Store(uri, "r")
    schema = pa.schema([("x", pa.int64())])
    store.write_run({"name": "x"}, "fp")
    write_table(store, 1, "t", [{"x": i} for i in range(5)], config_hash="h", schema=schema, shard_rows=2)
    write_table(store, 2, "t", [{"x": 10}], config_hash="h", schema=schema)
    before = {(r, s["file"]): s["sha256"] for r in (1, 2) for s in store.manifest(r, "t")["shards"]}
    ok = cli("query", f"runs_dir={uri}", "run=r", "--format", "json",
             "select round, count(*) as n, sum(x) as s from t group by all order by 1")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == [{"round": 1, "n": 5, "s": 10}, {"round": 2, "n": 1, "s": 10}]
    shard = store.files(1, "t")[0]
    for sql in (f"COPY (select 1 as x) TO '{shard}' (FORMAT parquet)", f"select * from read_parquet('{shard}')"):
        refused = cli("query", f"runs_dir={uri}", "run=r", sql)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    after = {(r, s["file"]): s["sha256"] for r in (1, 2) for s in store.manifest(r, "t")["shards"]}
    assert after == before
    for (r, name), sha in before.items():  # the objects themselves, not only what the manifests say
        assert hashlib.sha256(store.fs.cat_file(f"{store.table_dir(r, 't')}/{name}")).hexdigest() == sha


def test_every_numeric_knob_has_a_range():
    import dataclasses
    import typing

    from alma_data.config import Recipe
    from alma_data.recipe_checks import RULES, UNCHECKED

    def keys(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from keys(hints[f.name], f"{prefix}{f.name}.")
            elif hints[f.name] in (int, float):
                yield prefix + f.name

    ruled = {key for key, _, _ in RULES}
    numeric = set(keys(Recipe))
    assert numeric - ruled - set(UNCHECKED) == set(), "a numeric recipe key without a range in recipe_checks.RULES"
    assert ruled - numeric == set(), "a rule for a key the recipe does not have"
