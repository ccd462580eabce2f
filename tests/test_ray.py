"""executor=ray against a real local Ray instance: the same rows as executor=local, and
either executor resumes what the other started.

The local builds here run torch on one thread (OMP_NUM_THREADS=1), as each Ray worker
with one CPU does: float32 sums then add up in the same order in both, so the judge's
scores are compared exactly, bit for bit. (With different thread counts they agree to
about 1e-6.)
"""

import json
import os
import shutil
import subprocess
import sys
import time

import duckdb
import psutil
import pytest

from alma_data.executors import EngineSpec, ShardJob, WorkerPlan
from alma_data.store import Store

RESPONSES = "response_id, prompt_id, checkpoint, sample_index, seed, response, n_tokens, finish_reason"
JUDGMENTS = "response_id, score, score_int, probs, judge"
# One prompt a sampling shard and one pair a judging shard: 8 + 16 shards in round 2, so
# that work is spread over both workers and a kill lands between shards.
RECIPE = ["recipe=tiny", "store.shard_rows=1"]


def build_args(runs, run, *keys):
    return [sys.executable, "-m", "alma_data", "build", "round=2", f"runs_dir={runs}", f"run={run}", *keys]


ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def build(runs, run, *keys, env=None):
    """The real ``alma-data build``; returns its process id and its stderr."""
    proc = subprocess.Popen(build_args(runs, run, *keys), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or ENV)
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"alma-data build {' '.join(keys)} failed ({proc.returncode}):\n{err[-4000:]}")
    return proc.pid, err


def rows_by(runs, run, table, columns, key):
    return duckdb.sql(f"select {columns} from read_parquet('{runs}/{run}/round=2/{table}/part-*.parquet') "
                      f"order by {key}").fetchall()


def rows(runs, run, table, columns):
    return rows_by(runs, run, table, columns, "response_id")


def copy_without(runs, src, dst, *tables):
    shutil.copytree(runs / src, runs / dst)
    for table in tables:
        shutil.rmtree(runs / dst / "round=2" / table)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Rounds 1 and 2 of the tiny recipe, built locally: the reference."""
    runs = tmp_path_factory.mktemp("ray_runs")
    build(runs, "local", *RECIPE)
    return runs


def test_ray_writes_the_same_rows_as_local(runs):
    copy_without(runs, "local", "ray", "prompt_candidates", "responses", "judgments")
    pid, out = build(runs, "ray", "executor=ray", "ray.num_workers=2")
    assert "ray: started a local Ray instance: 1 node(s), 2 CPUs" in out
    store = Store(runs, "ray")
    # the candidates the base model writes: the same bytes, so the prompts made from them stand
    cand = "candidate_id, prompt_id, prompt, shots, status"
    assert rows_by(runs, "ray", "prompt_candidates", cand, "candidate_id") == \
        rows_by(runs, "local", "prompt_candidates", cand, "candidate_id")
    assert store.manifest(2, "prompt_candidates")["hash"] == Store(runs, "local").manifest(2, "prompt_candidates")["hash"]
    assert "[round 2] rebalance prompts: already done" in out
    for table in ("prompt_candidates", "responses", "judgments"):
        by = store.manifest(2, table)["run_by"]
        # every shard written by Ray worker processes (two at a time), none by the build's own process
        assert by["executor"] == "ray" and by["workers"] == 2 and by["shards"] == len(store.manifest(2, table)["shards"])
        assert len(by["processes"]) >= 2 and not [p for p in by["processes"] if p.endswith(f" pid {pid}")]
    assert len(rows(runs, "local", "responses", RESPONSES)) == 16
    assert rows(runs, "ray", "responses", RESPONSES) == rows(runs, "local", "responses", RESPONSES)
    assert rows(runs, "ray", "judgments", JUDGMENTS) == rows(runs, "local", "judgments", JUDGMENTS)
    # byte-identical shards: the tables' hashes agree, so nothing downstream is redone
    local = Store(runs, "local")
    assert store.manifest(2, "judgments")["hash"] == local.manifest(2, "judgments")["hash"]
    assert "[round 2] sft: already done" in out and "train m2: already done" in out


def test_ray_workers_write_into_an_object_store(runs, s3_server, tmp_path):
    """A run half-made locally is copied into a bucket; ``executor=ray`` finishes it there:
    workers fetch the checkpoints from the bucket and write their shards into it."""
    import pyarrow.fs as pafs

    from alma_data.store import parse_location

    copy_without(runs, "local", "to_s3", "responses", "judgments")
    uri = s3_server()
    loc = parse_location(uri)
    bucket_fs, _ = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(runs / "to_s3"), f"{loc.base}/ray", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=bucket_fs)
    env = {**ENV, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
           "ALMA_DATA_CACHE": str(tmp_path / "cache")}
    _, out = build(uri, "ray", "executor=ray", "ray.num_workers=2", env=env)
    store, local = Store(uri, "ray"), Store(runs, "local")
    for table, columns in (("responses", RESPONSES), ("judgments", JUDGMENTS)):
        m = store.manifest(2, table)
        assert m["run_by"]["executor"] == "ray" and m["run_by"]["shards"] == len(m["shards"]) == len(local.manifest(2, table)["shards"])
        got = store.read(2, table).sort_by("response_id").select(columns.split(", "))
        want = local.read(2, table).sort_by("response_id").select(columns.split(", "))
        assert got.equals(want), f"{table} written by Ray into the bucket differs from the local build"
    assert "[round 2] sft: already done" in out
    # the workers loaded the checkpoints from copies under ALMA_DATA_CACHE, made from the bucket
    assert len(list((tmp_path / "cache" / "checkpoints").iterdir())) == 3  # m1a, m1b, judge


@pytest.mark.e2e
def test_killed_ray_build_resumes_with_the_local_executor(runs):
    copy_without(runs, "local", "mixed", "judgments")
    responses = runs / "mixed" / "round=2" / "responses"
    (responses / "_manifest.json").unlink()
    local_shards = sorted(p.name for p in responses.glob("part-*.parquet"))
    for name in local_shards[4:]:  # half the sampling shards "written before a stop": Ray writes the rest
        (responses / name).unlink()

    judgments = runs / "mixed" / "round=2" / "judgments"
    proc = subprocess.Popen(build_args(runs, "mixed", "executor=ray", "ray.num_workers=2"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(judgments.glob("part-*.parquet")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    # kill the build and the Ray instance it started (its workers among them), as a lost node would
    started = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    for child in started:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(started, timeout=30)
    store = Store(runs, "mixed")
    assert store.is_done(2, "responses"), "the Ray build did not finish sampling"
    assert store.manifest(2, "responses")["run_by"]["shards"] == 4  # only the missing half
    written = len(list(judgments.glob("part-*.parquet")))
    assert 0 < written < 16 and not store.is_done(2, "judgments"), "the kill did not land inside judging"

    _, out = build(runs, "mixed", "executor=local")
    assert "[round 2] responses: already done" in out
    m = store.manifest(2, "judgments")
    assert m["run_by"]["executor"] == "local" and m["run_by"]["shards"] == 16 - written
    assert rows(runs, "mixed", "responses", RESPONSES) == rows(runs, "local", "responses", RESPONSES)
    assert rows(runs, "mixed", "judgments", JUDGMENTS) == rows(runs, "local", "judgments", JUDGMENTS)
    assert json.loads((runs / "mixed" / "run.json").read_text())["fingerprint"] == Store(runs, "local").read_run()["fingerprint"]


def test_a_free_worker_takes_another_engine_only_where_that_pays():
    m1a, m1b = EngineSpec("/r/m1a", name="m1a", round=1), EngineSpec("/r/m1b", name="m1b", round=1)

    def plan_with(b_shards):
        plan = WorkerPlan([ShardJob(m1a, [(0, "a0"), (1, "a1")]),
                           ShardJob(m1b, [(2 + i, f"b{i}") for i in range(b_shards)])])
        for _ in range(2):  # the stage starts two workers: one for each engine
            spec = plan.next_engine(None)
            plan.holders[spec] += 1
            plan.queues[spec].popleft()
        assert plan.holders == {m1a: 1, m1b: 1}
        # each worker's first shard: 10 s to start and load, then 1 s a shard
        plan.record(m1a, 1.0, startup=10.0)
        plan.record(m1b, 1.0, startup=10.0)
        assert plan.next_engine(m1a) == m1a  # a worker keeps its engine while it has shards
        plan.queues[m1a].popleft()
        return plan

    # m1a is done; m1b's worker finishes its 2 waiting shards in 2 s, sooner than a new worker starts
    assert plan_with(b_shards=3).next_engine(m1a) is None
    # 30 waiting shards take its worker 30 s: a second worker for m1b pays
    assert plan_with(b_shards=31).next_engine(m1a) == m1b


def test_without_ray_the_executor_says_what_to_install(monkeypatch, tmp_path):
    from alma_data.config import load_recipe
    from alma_data.executors import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'alma-data\[ray\]'"):
        make_executor(load_recipe("tiny", {"executor": "ray"}), tmp_path)
    assert type(make_executor(load_recipe("tiny", {"executor": "local"}), tmp_path)).__name__ == "LocalExecutor"
