"""Rounds 2..R on the tiny model: the loop's invariants, its queries, and resuming a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from alma_data.stages.responses import split_counts
from alma_data.store import Store
from conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def con(tiny_run):
    return Store(tiny_run, "shared").connect()


def test_no_prompt_appears_in_two_rounds(con):
    assert con.execute("select count(*) from (select prompt_id from prompts group by all having count(distinct round) > 1)").fetchone()[0] == 0
    assert con.execute("select count(distinct round) from prompts").fetchone()[0] == 3


def test_every_sft_row_is_the_top_response_of_its_prompt(con):
    rows = con.execute("""
        select s.round, s.prompt_id, s.score, max(j.score) as top, count(*) as n
        from sft s join responses r on r.prompt_id = s.prompt_id and r.round = s.round
        join judgments j on j.response_id = r.response_id and j.round = r.round
        where s.round >= 2 group by all""").fetchall()
    assert len(rows) == 8
    assert all(score == top for _, _, score, top, _ in rows)
    # and the stored response is that top response's text
    assert con.execute("""
        select count(*) from sft s join responses r using (response_id) where s.response <> r.response""").fetchone()[0] == 0


def test_every_pair_prefers_the_higher_score(con):
    pairs = con.execute("select chosen_score, rejected_score, chosen_id, rejected_id from dpo").fetchall()
    assert pairs and all(c > r for c, r, _, _ in pairs)
    # chosen is the best of its prompt under best_vs_random
    assert con.execute("""
        select count(*) from dpo d join sft s on s.round = d.round and s.prompt_id = d.prompt_id
        where d.chosen_id <> s.response_id""").fetchone()[0] == 0


def test_checkpoint_mix_has_exact_counts(con, tiny_run):
    got = dict(((r, c), n) for r, c, n in con.execute(
        "select round, checkpoint, count(*) from responses group by all").fetchall())
    # N=4: m1a:m1b = 2:2 in round 2; m1a:m1b:m2 = 2:1:1 in round 3; times 4 prompts
    assert got == {(2, "m1a"): 8, (2, "m1b"): 8, (3, "m1a"): 8, (3, "m1b"): 4, (3, "m2"): 4}
    m = Store(tiny_run, "shared").manifest(3, "responses")
    assert m["checkpoint_counts"] == {"m1a": 2, "m1b": 1, "m2": 1}
    assert con.execute("select count(distinct sample_index) from responses where round = 3").fetchone()[0] == 4


def test_split_counts_are_exact():
    assert split_counts(200, [1, 1, 1]) == [67, 67, 66]
    assert split_counts(6, [1, 1]) == [3, 3]
    assert split_counts(7, [2, 1, 1]) == [3, 2, 2]  # 3.5, 1.75, 1.75 by largest remainder
    assert sum(split_counts(13, [3, 5, 1])) == 13


def test_judge_self_distillation_and_progress_are_recorded(con, tiny_run):
    store = Store(tiny_run, "shared")
    assert store.checkpoint_done(2, "judge")
    m = json.loads((store.checkpoint_dir(2, "judge") / "_manifest.json").read_text())
    assert m["started_from"].endswith("round=1/checkpoints/judge")
    quality = con.execute("select round, rung from judge_quality where metric = 'pairwise_accuracy_real' "
                          "and eval_set = 'heldout' order by round, rung").fetchall()
    # the ladder on the held-out annotations: few-shot base and fine-tuned in round 1, self-distilled in 2
    assert quality == [(1, "base few-shot"), (1, "fine-tuned"), (2, "self-distilled")]
    # round 3 is judged by the distilled judge
    assert con.execute("select distinct judge from judgments where round = 3").fetchall() == [("round=2/judge",)]
    held = con.execute("select round, count(*) from eval group by all order by round").fetchall()
    assert held == [(1, 4), (2, 4), (3, 4)]


def test_cookbook_queries_answer(tiny_run):
    for name in ("prompt_funnel", "round_summary", "best_of_n_curve"):
        out = json.loads(run_cli("query", f"runs_dir={tiny_run}", str(ROOT / "sql" / f"{name}.sql"), "--format", "json").stdout)
        assert out, name
    curve = json.loads(run_cli("query", f"runs_dir={tiny_run}", str(ROOT / "sql" / "best_of_n_curve.sql"), "--format", "json").stdout)
    con = Store(tiny_run, "shared").connect()
    for round_ in (2, 3):
        points = {c["n"]: c["expected_best_score"] for c in curve if c["round"] == round_}
        mean, best = con.execute(f"""select avg(j.score), (select avg(m) from (select max(j2.score) as m from responses r2
            join judgments j2 using (response_id) where r2.round = {round_} group by r2.prompt_id))
            from responses r join judgments j using (response_id) where r.round = {round_}""").fetchone()
        assert points[1] == pytest.approx(mean) and points[4] == pytest.approx(best)
        assert points[1] <= points[2] <= points[4]


def test_paper_recipe_wires_up_on_a_small_slice(tmp_path):
    run_cli("build", "round=2", "recipe=paper", f"runs_dir={tmp_path}", "model=tiny-random", "prompts.k=4",
            "responses.n=6", "prompts.candidates=12", "prompts.keep_truncated=true", "prompts.max_new_tokens=16",
            "responses.max_new_tokens=8", "eval.max_new_tokens=8", "seeds.max_sft=24", "seeds.max_judge=32",
            "seeds.eval_prompts=2", "train.max_steps=1", "judge.max_steps=1", "train.max_length=128",
            "judge.max_length=192", "train.bf16=false", "store.shard_rows=8")
    con = Store(tmp_path, "paper").connect()
    assert con.execute("select count(*) from responses").fetchone()[0] == 4 * 6
    assert con.execute("select count(*) from prompts where round = 2").fetchone()[0] == 4


def test_killed_during_sampling_resumes_to_the_same_rows(tmp_path, tiny_run):
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "alma_data", "build", "round=2", "recipe=tiny", f"runs_dir={runs}", "run=shared"]
    proc = subprocess.Popen(args, env={**os.environ, "TQDM_DISABLE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = runs / "shared" / "round=2" / "responses" / "part-00000.parquet"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(runs, "shared")
    assert first.exists() and not store.is_done(2, "responses"), "the kill did not land inside sampling"
    shards_before = {p.name for p in store.table_dir(2, "responses").glob("part-*.parquet")}
    out = run_cli("build", "round=2", "recipe=tiny", f"runs_dir={runs}", "run=shared")
    assert "prompt candidates: already done" in out.stderr
    assert store.is_done(2, "responses") and shards_before < {s["file"] for s in store.manifest(2, "responses")["shards"]} | shards_before
    q = "select response_id, prompt_id, checkpoint, sample_index, seed, response from read_parquet('{}/shared/round=2/responses/*.parquet') order by response_id"
    assert duckdb.sql(q.format(runs)).fetchall() == duckdb.sql(q.format(tiny_run)).fetchall()


def test_dpo_trainer_trains_m2_from_m1a_on_the_pairs(tmp_path, tiny_run):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(tiny_run / "shared", runs / "dpo")
    for path in [runs / "dpo" / "round=3", runs / "dpo" / "round=2" / "checkpoints", runs / "dpo" / "round=2" / "eval_answers", runs / "dpo" / "round=2" / "eval"]:
        shutil.rmtree(path)
    # a new run with the same data so far, switched to DPO: only M_2 (and what follows) is redone
    out = run_cli("build", "round=2", "run=dpo", f"runs_dir={runs}", "train.trainer=dpo", "--force")
    assert "responses: already done" in out.stderr
    m = json.loads((Store(runs, "dpo").checkpoint_dir(2, "m2") / "_manifest.json").read_text())
    assert m["training"]["trainer"] == "dpo" and m["started_from"].endswith("round=1/checkpoints/m1a")
    assert m["training"]["examples"] == Store(runs, "dpo").manifest(2, "dpo")["rows"]
