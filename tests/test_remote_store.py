"""The store on an object store: ``runs_dir=s3://...`` against a real S3 server (moto's,
started on loopback by the ``s3_server`` fixture).

Shards, manifests and checkpoints live in the bucket; DuckDB reads them there; engines and
trainers load checkpoints through a local copy; a worker process writes shards by URI.
"""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from alma_data.store import Store, StoreError, list_runs, local_model_path, parse_location, write_table
from conftest import run_cli

SCHEMA = pa.schema([("id", pa.string()), ("x", pa.int64())])


def rows(start, n):
    return [{"id": f"row-{i:04d}", "x": i} for i in range(start, start + n)]


def s3_files(uri):
    loc = parse_location(uri)
    fs, _ = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(loc.base, recursive=True, allow_not_found=True))
    return {i.path[len(loc.base) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


def test_shards_manifests_resume_and_sql_live_in_the_bucket(s3_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in a local folder named "s3:"
    uri = s3_server()
    store = Store(uri, "r")
    assert store.remote and store.where().startswith("s3://alma-test/runs-")
    w = store.writer(1, "t", config_hash="h1", schema=SCHEMA).expect(3)
    assert w.write_shard(0, rows(0, 3)) == 3
    assert w.write_shard(1, rows(3, 2)) == 2
    assert not store.is_done(1, "t")
    # A rerun with the same configuration resumes from the shards in the bucket...
    again = store.writer(1, "t", config_hash="h1", schema=SCHEMA)
    assert again.done_shards() == {0, 1}
    with pytest.raises(StoreError, match=r"shards \[2\] missing"):
        again.finish(expected_shards=3)
    again.write_shard(2, rows(5, 4))
    m = again.finish(expected_shards=3)
    assert m["rows"] == 9 and [s["rows"] for s in m["shards"]] == [3, 2, 4]
    assert store.is_done(1, "t") and store.manifest(1, "t")["hash"] == m["hash"]
    assert store.read(1, "t").column("x").to_pylist() == list(range(9))
    # ...and DuckDB reads the bucket through the store's connection.
    con = store.connect()
    assert con.execute("select count(*), sum(x), min(round) from t").fetchone() == (9, 36, 1)
    assert all(str(f).startswith("s3://") for f in store.files(1, "t"))
    # another configuration's shards are no resume points
    other = store.writer(1, "u", config_hash="a", schema=SCHEMA)
    other.write_shard(0, rows(0, 1))
    assert store.writer(1, "u", config_hash="b", schema=SCHEMA).done_shards() == set()

    store.write_run({"name": "x"}, "fp")
    write_table(store, 2, "small", rows(0, 2), config_hash="h", schema=SCHEMA)
    assert list_runs(uri) == ["r"]
    assert store.done_tables() == {"small": [2], "t": [1]}
    assert store.rounds_present() == [1, 2]
    keys = s3_files(uri)
    assert {"r/run.json", "r/round=1/t/_manifest.json", "r/round=1/t/part-00002.parquet"} <= set(keys)
    assert not any(k.endswith(".tmp") for k in keys)
    assert not list(tmp_path.iterdir())


def _write_from_worker(sink, index, n):
    return sink.write_shard(index, rows(100 * index, n))


def test_a_worker_process_writes_shards_by_uri(s3_server):
    store = Store(s3_server(), "r")
    w = store.writer(1, "t", config_hash="h", schema=SCHEMA)
    sink = w.sink()
    assert "://" in sink.runs_dir  # the URI travels, not an open filesystem
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.starmap(_write_from_worker, [(sink, 0, 2), (sink, 1, 3)]) == [2, 3]
    assert w.done_shards() == {0, 1}
    assert w.finish(expected_shards=2)["rows"] == 5


def test_checkpoints_are_copied_down_once_and_checked(s3_server, tmp_path, monkeypatch, tiny_model):
    import shutil

    monkeypatch.setenv("ALMA_DATA_CACHE", str(tmp_path / "cache"))
    store = Store(s3_server(), "r")
    staging = store.checkpoint_staging(1, "m")
    assert str(staging).startswith(str(tmp_path / "cache"))  # trained locally, then uploaded
    shutil.copytree(tiny_model, staging)
    where = store.commit_checkpoint(staging, 1, "m", {"config_hash": "h"})
    assert where.startswith("s3://") and "endpoint_override=" in where
    assert store.checkpoint_done(1, "m") and not staging.exists()
    m = store.checkpoint_manifest(1, "m")
    assert {f["file"] for f in m["files"]} == {p.name for p in Path(tiny_model).iterdir() if p.is_file()}

    # The training machine kept its copy: loading needs no download.
    kept = Path(local_model_path(where))
    assert (kept / "_manifest.json").is_file()
    # Another machine (a fresh cache) copies it down, checks the sizes, and then reuses it.
    monkeypatch.setenv("ALMA_DATA_CACHE", str(tmp_path / "other"))
    got = Path(local_model_path(where))
    assert got != kept and str(got).startswith(str(tmp_path / "other"))
    for f in m["files"]:
        assert (got / f["file"]).read_bytes() == (Path(tiny_model) / f["file"]).read_bytes()
    stamp = (got / "config.json").stat().st_mtime_ns
    assert local_model_path(where) == str(got) and (got / "config.json").stat().st_mtime_ns == stamp

    from alma_data.engines.transformers_engine import TransformersEngine

    assert TransformersEngine(local_model_path(where)).tokenizer is not None
    with pytest.raises(StoreError, match="not a finished checkpoint"):
        local_model_path(store.checkpoint_location(1, "missing"))


def test_two_workers_copying_one_checkpoint_at_once_agree(s3_server, tmp_path, monkeypatch, tiny_model):
    import shutil

    monkeypatch.setenv("ALMA_DATA_CACHE", str(tmp_path / "trainer"))
    store = Store(s3_server(), "r")
    staging = store.checkpoint_staging(1, "m")
    shutil.copytree(tiny_model, staging)
    where = store.commit_checkpoint(staging, 1, "m", {"config_hash": "h"})
    monkeypatch.setenv("ALMA_DATA_CACHE", str(tmp_path / "node"))  # a node that has no copy yet
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        got = pool.map(local_model_path, [where] * 3)
    assert len(set(got)) == 1
    copy = Path(got[0])
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]  # no temporary folder left
    for f in store.checkpoint_manifest(1, "m")["files"]:
        assert (copy / f["file"]).read_bytes() == (Path(tiny_model) / f["file"]).read_bytes()


def test_a_bad_uri_names_the_fix(tmp_path):
    with pytest.raises(StoreError, match="name a bucket"):
        Store("s3://", "r")
    with pytest.raises(StoreError, match="cannot open this filesystem"):
        Store("nosuchfs://bucket/runs", "r")


@pytest.mark.e2e
def test_a_build_on_s3_gives_the_rows_of_a_local_build(s3_server, tiny_run, tmp_path, monkeypatch):
    """``alma-data build`` with runs_dir on S3: every stage, every table, the same rows as the
    local build of the same recipe; then ``query``, ``status`` and ``runs`` read it there."""
    monkeypatch.setenv("ALMA_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    uri = s3_server()
    # Killed once the first shard of round 2's responses is in the bucket...
    args = [sys.executable, "-m", "alma_data", "build", "round=2", "recipe=tiny", f"runs_dir={uri}", "run=shared"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    loc = parse_location(uri)
    bucket_fs, _ = pafs.FileSystem.from_uri(uri)
    first = f"{loc.base}/shared/round=2/responses/part-00000.parquet"
    deadline = time.time() + 300
    while bucket_fs.get_file_info(first).type != pafs.FileType.File and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not Store(uri, "shared").is_done(2, "sft"), "the kill came too late to test a resume"
    # ...and run again: it goes on from what is in the bucket.
    out = run_cli("build", "round=2", "recipe=tiny", f"runs_dir={uri}", "run=shared").stderr
    assert "[round 2] prompt candidates: already done" in out and "[round 1] train m1a: already done" in out
    remote, local = Store(uri, "shared"), Store(tiny_run, "shared")
    tables = remote.done_tables()
    assert tables == {t: [r for r in rs if r <= 2] for t, rs in local.done_tables().items() if min(rs) <= 2}
    for table, rounds in tables.items():
        for r in rounds:
            # byte-identical shards, judge_quality's float aggregates included
            shas = [[s["sha256"] for s in store.manifest(r, table)["shards"]] for store in (remote, local)]
            assert shas[0] == shas[1], f"round={r}/{table} differs between the S3 and the local build"
    for rnd, name in [(1, "m1a"), (1, "m1b"), (1, "judge"), (2, "m2"), (2, "judge")]:
        assert remote.checkpoint_done(rnd, name)
    keys = s3_files(uri)
    assert "shared/builds.jsonl" in keys and "shared/round=2/checkpoints/m2/model.safetensors" in keys
    assert not any(k.endswith(".tmp") for k in keys) and not list(tmp_path.glob("s3*"))

    q = run_cli("query", f"runs_dir={uri}", "run=shared", "select round, count(*) n from sft group by all order by 1",
                "--format", "json").stdout
    assert [(r["round"], r["n"]) for r in json.loads(q)] == [(1, local.manifest(1, "sft")["rows"]),
                                                              (2, local.manifest(2, "sft")["rows"])]
    status = run_cli("status", f"runs_dir={uri}", "run=shared").stdout
    assert "round 2: done" in status and "s3://alma-test/" in status
    assert run_cli("runs", f"runs_dir={uri}").stdout.startswith("shared")
    report = run_cli("report", f"runs_dir={uri}", "run=shared").stderr
    assert "copied into s3://alma-test/" in report and "shared/report/report.html" in s3_files(uri)
    pub = run_cli("publish", f"runs_dir={uri}", "run=shared", "repo=me/alma-test", f"to={tmp_path / 'pub'}").stderr
    assert "nothing uploaded" in pub
    assert pq.read_table(tmp_path / "pub" / "sft" / "round-002.parquet").num_rows == local.manifest(2, "sft")["rows"]
    # A second build finds everything done in the bucket.
    again = run_cli("build", "round=2", "recipe=tiny", f"runs_dir={uri}", "run=shared").stderr
    assert "run 'shared' is already built to round 2: nothing to do" in again
    assert os.environ["AWS_ACCESS_KEY_ID"] == "alma-test"


def test_an_unreachable_store_says_what_to_check(tmp_path, monkeypatch):
    import socket

    for k, v in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"s3://alma-test/runs?endpoint_override=127.0.0.1:{port}&scheme=http"
    proc = run_cli("status", f"runs_dir={uri}", "run=r", check=False)
    assert proc.returncode == 2
    assert "the runs folder s3://alma-test/runs could not be read or written" in proc.stderr
    assert "AWS_ACCESS_KEY_ID" in proc.stderr and "Traceback" not in proc.stderr
