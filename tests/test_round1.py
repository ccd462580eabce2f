"""Round 1 for real, on the tiny model, through the real command in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import pyarrow.parquet as pq

from alma_data.store import Store
from conftest import run_cli

TABLES = ["prompts", "sft", "judge_seed", "judge_eval", "judge_quality"]


def table_rows(runs, run, table, order_by):
    return duckdb.sql(
        f"select * exclude (probs) from read_parquet('{runs}/{run}/round=1/{table}/*.parquet') order by {order_by}"
        if table == "judge_eval" else
        f"select * from read_parquet('{runs}/{run}/round=1/{table}/*.parquet') order by {order_by}").fetchall()


def test_round1_writes_the_contracted_tables_and_checkpoints(tiny_run):
    store = Store(tiny_run, "shared")
    for t in TABLES:
        m = store.manifest(1, t)
        assert m is not None and m["rows"] > 0, t
    assert set(store.manifest(1, "sft")["columns"]) >= {"prompt_id", "prompt", "response", "score"}
    assert set(store.manifest(1, "judge_eval")["columns"]) >= {"score", "score_int", "probs", "judge"}
    for name in ("m1a", "m1b", "judge"):
        m = json.loads((store.checkpoint_dir(1, name) / "_manifest.json").read_text())
        assert m["base_model"] == "tiny-random" and m["training"]["steps"] == 2
        assert (store.checkpoint_dir(1, name) / "model.safetensors").is_file()
    # m1a and m1b differ only by their seed, and the seed shows in their weights.
    a = (store.checkpoint_dir(1, "m1a") / "model.safetensors").read_bytes()
    b = (store.checkpoint_dir(1, "m1b") / "model.safetensors").read_bytes()
    assert a != b
    con = store.connect()
    # Eval prompts are held out of SFT; held-out annotations are the ones judged.
    assert con.execute("select count(*) from sft join prompts using (prompt_id) where split = 'eval'").fetchone()[0] == 0
    held = con.execute("select count(*) from judge_seed where heldout").fetchone()[0]
    assert con.execute("select count(*) from judge_eval where round = 1").fetchone()[0] == held > 0
    # Real-valued scores are expectations of the 11 probabilities; integer scores their argmax.
    for score, score_int, probs in con.execute("select score, score_int, probs from judge_eval").fetchall():
        assert len(probs) == 11 and abs(sum(probs) - 1) < 1e-4
        assert abs(score - sum(i * p for i, p in enumerate(probs))) < 1e-3
        assert score_int == max(range(11), key=lambda i: probs[i])
    metrics = dict(con.execute("select metric, value from judge_quality where round = 1").fetchall())
    assert {"pairwise_accuracy_real", "pairwise_accuracy_int", "spearman_real", "spearman_int"} <= set(metrics)


def test_rerun_does_nothing_and_says_so(tiny_run):
    before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*.parquet")}
    proc = run_cli("build", "round=1", "recipe=tiny", f"runs_dir={tiny_run}", "run=shared")
    assert "nothing to do" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*.parquet")} == before


def test_query_command_and_formats(tiny_run, tmp_path):
    out = run_cli("query", f"runs_dir={tiny_run}", "run=shared", "select round, count(*) as n from sft group by all").stdout
    assert "round" in out and "44" in out
    js = run_cli("query", f"runs_dir={tiny_run}", "select count(*) as n from judge_seed", "--format", "json").stdout
    assert json.loads(js) == [{"n": 64}]
    csv_out = tmp_path / "q.csv"
    run_cli("query", f"runs_dir={tiny_run}", "--format", "csv", "--out", str(csv_out), "select prompt_id from prompts where round = 1")
    assert len(csv_out.read_text().splitlines()) == 49
    pq_out = tmp_path / "q.parquet"
    run_cli("query", f"runs_dir={tiny_run}", "--format", "parquet", "--out", str(pq_out), "select * from sft where round = 1")
    assert pq.read_metadata(pq_out).num_rows == 44
    sql_file = tmp_path / "q.sql"
    sql_file.write_text("select count(*) as n from prompts where split = 'eval'")
    assert json.loads(run_cli("query", f"runs_dir={tiny_run}", str(sql_file), "--format", "json").stdout) == [{"n": 4}]
    bad = run_cli("query", f"runs_dir={tiny_run}", "select * from nonexistent", check=False)
    assert bad.returncode == 2 and "alma-data tables" in bad.stderr
    tables = run_cli("tables", f"runs_dir={tiny_run}").stdout
    assert all(t in tables for t in TABLES)


def test_changed_recipe_is_refused_with_the_difference(tiny_run):
    proc = run_cli("build", "round=1", "recipe=tiny", f"runs_dir={tiny_run}", "run=shared", "train.max_steps=3",
                   check=False)
    assert proc.returncode == 2
    assert "train.max_steps: 2 -> 3" in proc.stderr and "run=NEW_NAME" in proc.stderr and "--force" in proc.stderr


def test_malformed_seed_file_stops_before_anything_is_written(tmp_path):
    bad = tmp_path / "sft.jsonl"
    bad.write_text(json.dumps({"prompt": "ok", "response": "fine"}) + "\n" + '{"prompt": "oops"}\n')
    proc = run_cli("build", "round=1", "recipe=tiny", f"runs_dir={tmp_path / 'runs'}", f"seeds.sft={bad}", check=False)
    assert proc.returncode == 2
    assert f"{bad}:2" in proc.stderr and "missing column 'response'" in proc.stderr
    assert not list((tmp_path / "runs").rglob("*.parquet"))


def test_unknown_key_on_the_command_line(tmp_path):
    proc = run_cli("build", "round=1", f"runs_dir={tmp_path}", "responses.nn=3", check=False)
    assert proc.returncode == 2 and "responses.nn" in proc.stderr and "responses.n" in proc.stderr


def test_killed_build_resumes_to_the_same_rows(tmp_path, tiny_run):
    runs = tmp_path / "runs"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    args = [sys.executable, "-m", "alma_data", "build", "round=1", "recipe=tiny", f"runs_dir={runs}", "run=shared"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = runs / "shared" / "round=1" / "checkpoints" / "m1a" / "_manifest.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of training m1b
    proc.wait()
    store = Store(runs, "shared")
    assert store.checkpoint_done(1, "m1a") and not store.checkpoint_done(1, "judge")
    done = run_cli("build", "round=1", "recipe=tiny", f"runs_dir={runs}", "run=shared")
    assert "train m1a: already done" in done.stderr
    for table, key in [("prompts", "prompt_id"), ("sft", "prompt_id, response"),
                       ("judge_seed", "annotation_id"), ("judge_eval", "annotation_id")]:
        resumed, clean = table_rows(runs, "shared", table, key), table_rows(tiny_run, "shared", table, key)
        assert len(resumed) == len(clean), table
        if table != "judge_eval":
            assert resumed == clean, table
        else:  # same rows; scores agree to float precision of separately trained (same-seed) judges
            for r, c in zip(resumed, clean):
                assert r[:3] == c[:3] and abs(r[3] - c[3]) < 1e-3


def test_force_rebuilds_from_the_first_changed_stage(tiny_run, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(tiny_run / "shared", runs / "shared")
    store = Store(runs, "shared")
    seeds_hash = store.manifest(1, "sft")["hash"]
    judge_before = (store.checkpoint_dir(1, "judge") / "_manifest.json").read_text()
    m1a_before = (store.checkpoint_dir(1, "m1a") / "_manifest.json").read_text()
    out = run_cli("build", "round=1", "recipe=tiny", f"runs_dir={runs}", "run=shared", "train.max_steps=3", "--force")
    assert "seeds: already done" in out.stderr and "train judge: already done" in out.stderr
    assert store.manifest(1, "sft")["hash"] == seeds_hash
    assert (store.checkpoint_dir(1, "judge") / "_manifest.json").read_text() == judge_before
    m1a = json.loads((store.checkpoint_dir(1, "m1a") / "_manifest.json").read_text())
    assert m1a["training"]["steps"] == 3 and json.dumps(m1a) != m1a_before
    assert store.read_run()["recipe"]["train"]["max_steps"] == 3
