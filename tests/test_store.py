
import os
import duckdb
import pyarrow as pa
import pytest

from alma_data.ids import normalize_text, prompt_id, stable_id
from alma_data.store import Store, StoreError, TableRef, file_sha256, write_table

SCHEMA = pa.schema([("id", pa.string()), ("x", pa.int64())])


def rows(start, n):
    return [{"id": stable_id("row", i), "x": i} for i in range(start, start + n)]


def test_shards_manifest_and_checksums(tmp_path):
    store = Store(tmp_path, "r")
    w = store.writer(1, "t", config_hash="h1", schema=SCHEMA)
    assert w.write_shard(0, rows(0, 3)) == 3
    assert w.write_shard(1, rows(3, 2)) == 2
    assert not store.is_done(1, "t")  # no manifest yet: not done
    m = w.finish(expected_shards=2, models={"m": "tiny"})
    assert store.is_done(1, "t")
    assert m["rows"] == 5 and [s["rows"] for s in m["shards"]] == [3, 2]
    for s in m["shards"]:
        assert s["sha256"] == file_sha256(store.table_dir(1, "t") / s["file"])
    assert m["config_hash"] == "h1" and m["models"] == {"m": "tiny"} and "code_version" in m
    assert store.read(1, "t").num_rows == 5
    assert not list(store.table_dir(1, "t").glob(".*.tmp"))


def test_resume_keeps_shards_of_the_same_config_and_drops_others(tmp_path):
    store = Store(tmp_path, "r")
    w = store.writer(1, "t", config_hash="h1", schema=SCHEMA)
    w.write_shard(0, rows(0, 2))
    # A second writer (a rerun after a kill) with the same config sees shard 0 done.
    w2 = store.writer(1, "t", config_hash="h1", schema=SCHEMA)
    assert w2.done_shards() == {0}
    with pytest.raises(StoreError, match="missing"):
        w2.finish(expected_shards=2)
    # Another config: the old shards are no resume points.
    w3 = store.writer(1, "t", config_hash="h2", schema=SCHEMA)
    assert w3.done_shards() == set()


def test_a_half_written_shard_is_ignored(tmp_path):
    store = Store(tmp_path, "r")
    w = store.writer(1, "t", config_hash="h", schema=SCHEMA)
    (w.dir / ".part-00000.parquet.tmp").write_bytes(b"PAR1 half")  # as if killed mid-write
    w2 = store.writer(1, "t", config_hash="h", schema=SCHEMA)
    assert w2.done_shards() == set()
    assert not list(w2.dir.glob(".*.tmp"))


def test_input_hashes_are_recorded(tmp_path):
    store = Store(tmp_path, "r")
    m1 = write_table(store, 1, "a", rows(0, 4), config_hash="h", schema=SCHEMA)
    m2 = write_table(store, 1, "b", rows(0, 1), config_hash="h", schema=SCHEMA, inputs=[TableRef(1, "a")])
    assert m2["inputs"] == {"round=1/a": m1["hash"]}
    with pytest.raises(StoreError, match="not finished"):
        store.writer(1, "c", config_hash="h", schema=SCHEMA, inputs=[TableRef(2, "a")])


def test_views_over_all_rounds_and_plain_duckdb(tmp_path):
    store = Store(tmp_path, "r")
    store.write_run({"name": "x"}, "fp")
    write_table(store, 1, "t", rows(0, 3), config_hash="h", schema=SCHEMA)
    write_table(store, 2, "t", rows(10, 5), config_hash="h", schema=SCHEMA)
    con = store.connect()
    got = con.execute("select round, count(*) from t group by all order by round").fetchall()
    assert got == [(1, 3), (2, 5)]
    plain = duckdb.sql(f"select round, count(*) from read_parquet('{tmp_path}/r/round=*/t/*.parquet', "
                       "hive_partitioning = true) group by all order by round").fetchall()
    assert plain == got


def test_unfinished_tables_are_not_in_the_views(tmp_path):
    store = Store(tmp_path, "r")
    w = store.writer(1, "partial", config_hash="h", schema=SCHEMA)
    w.write_shard(0, rows(0, 2))
    assert "partial" not in store.done_tables()


def test_empty_table_keeps_its_schema(tmp_path):
    store = Store(tmp_path, "r")
    write_table(store, 1, "e", [], config_hash="h", schema=SCHEMA)
    t = store.read(1, "e")
    assert t.num_rows == 0 and t.schema.names == ["id", "x"]


def test_ids_are_deterministic_and_normalised():
    assert prompt_id("Hello,   World!") == prompt_id("hello world")
    assert prompt_id("hello world") != prompt_id("hello there")
    assert normalize_text("  A\tB!!  c ") == "a b c"
    assert stable_id("a", 1) == stable_id("a", 1) != stable_id("a", 2)


def test_bad_run_names_are_refused(tmp_path):
    with pytest.raises(StoreError):
        Store(tmp_path, "../escape")
    with pytest.raises(StoreError, match="no run"):
        Store(tmp_path, "missing").read_run()


def test_a_second_build_of_a_run_stops_while_the_first_holds_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import run_cli

    store = Store(tmp_path, "tiny")
    with store.build_lock():
        proc = run_cli("build", "round=1", "recipe=tiny", f"runs_dir={tmp_path}", "run=tiny", check=False)
        assert proc.returncode == 2
        assert f"is being built by pid {os.getpid()}" in proc.stderr and "run the same command again" in proc.stderr
        assert not store.exists()  # it stopped before writing anything
    # A build killed while holding the lock leaves no lock behind.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from alma_data.store import Store\n"
        f"with Store({str(tmp_path)!r}, 'tiny').build_lock():\n"
        "    print('held', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(StoreError, match=f"pid {holder.pid}"):
        with store.build_lock():
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    t0 = time.time()
    with store.build_lock():
        assert time.time() - t0 < 5
