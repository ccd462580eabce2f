"""The judge ladder and the prompt sets, measured every round of a real tiny build: outside
preference sets in the public shapes (``judge.eval_sets``) and prompt sets
(``eval.prompt_sets``) added to a built run, which measures them without redoing its data.
The figures in ``judge_quality`` are those ``alma-data judge`` prints for the same set and
judge; bad sets stop the build with one line and lose nothing built."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli

QUESTIONS = ["Name a primary colour.", "What is two plus two?", "Say hello in French.", "Name a planet.",
             "What do bees make?", "Give an antonym of hot."]
GOOD = ["Red is a primary colour.", "Two plus two is four.", "Bonjour.", "Mars is a planet.", "Bees make honey.",
        "Cold."]
BAD = ["Bananas.", "Seven.", "I do not know.", "The moon is cheese.", "Sand.", "Tuesday."]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("sets")
    with open(d / "plain.jsonl", "w") as f:  # TRL / RewardBench: {prompt, chosen, rejected}
        for q, g, b in zip(QUESTIONS, GOOD, BAD):
            f.write(json.dumps({"prompt": q, "chosen": g, "rejected": b}) + "\n")
        # one pair whose judge question is far over judge.max_length: counted, never cut
        f.write(json.dumps({"prompt": QUESTIONS[0], "chosen": "red " * 400, "rejected": BAD[0]}) + "\n")
    (d / "labelled.json").write_text(json.dumps(  # {input, output_1, output_2, label}
        [{"input": q, "output_1": b, "output_2": g, "label": 2} for q, g, b in zip(QUESTIONS, GOOD, BAD)]))
    pq.write_table(pa.Table.from_pylist(  # the binarised sets: chosen / rejected as conversations
        [{"chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": g}],
          "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": b}]}
         for q, g, b in zip(QUESTIONS, GOOD, BAD)]), d / "chat.parquet")
    with open(d / "mt.jsonl", "w") as f:  # the multi-turn benchmark question format
        for i, q in enumerate(QUESTIONS[:4]):
            f.write(json.dumps({"question_id": 80 + i, "category": ["facts", "math"][i % 2], "turns": [q, "Why?"]})
                    + "\n")
    (d / "alpaca.json").write_text(json.dumps([{"instruction": q, "dataset": "mini"} for q in QUESTIONS[4:]]))
    return d


def _keys(sets) -> list[str]:
    return [f"judge.eval_sets={sets / 'plain.jsonl'},{sets / 'labelled.json'},{sets / 'chat.parquet'}",
            f"eval.prompt_sets={sets / 'mt.jsonl'},{sets / 'alpaca.json'}"]


@pytest.fixture(scope="module")
def measured(tiny_run, sets, tmp_path_factory):
    """The suite's built tiny run (to round 3), copied, then built again with the sets added."""
    runs = tmp_path_factory.mktemp("ladder")
    shutil.copytree(tiny_run / "shared", runs / "shared")
    proc = run_cli("build", "round=3", "recipe=tiny", f"runs_dir={runs}", "run=shared", *_keys(sets))
    return runs, proc


def _query(runs, sql: str) -> list[tuple]:
    from alma_data.store import Store

    return Store(runs, "shared").connect().execute(sql).fetchall()


def test_sets_added_to_a_built_run_are_measured_and_nothing_else_is_redone(measured):
    runs, proc = measured
    record = json.loads((runs / "shared" / "builds.jsonl").read_text().splitlines()[-1])
    ran = sorted({s["stage"] for s in record["stages"] if not s["skipped"]})
    # the sets' stages, and judge_quality, which gains their rows (SQL over what is scored)
    assert ran == ["judge eval sets", "judge quality judge", "prompt set answers", "prompt set eval",
                   "prompt set summary"], ran
    assert "--force" not in proc.stderr
    # the sets' own lines in the build's log: accuracy with its interval, the long pair counted
    assert "judge quality, plain, fine-tuned: real-valued" in proc.stderr
    assert "1 pairs over judge.max_length=192 tokens left unscored" in proc.stderr
    # A later build that names no sets goes on measuring the run's: nothing to do, no rows dropped.
    again = run_cli("build", "round=3", "recipe=tiny", f"runs_dir={runs}", "run=shared")
    assert "measuring the run's judge.eval_sets as its earlier builds did" in again.stderr
    assert "measuring the run's eval.prompt_sets as its earlier builds did" in again.stderr
    assert "nothing to do" in again.stderr, again.stderr[-2000:]


def test_the_ladder_has_every_rung_on_every_set_with_intervals(measured):
    runs, _ = measured
    rows = _query(runs, "select round, eval_set, rung, metric, value, low, high, n from judge_quality")
    rungs = {(r[0], r[1], r[2]) for r in rows}
    for eval_set in ("heldout", "plain", "labelled", "chat"):
        assert {(1, eval_set, "base few-shot"), (1, eval_set, "fine-tuned"), (2, eval_set, "self-distilled")} <= rungs
    for rnd, eval_set, rung, metric, value, low, high, n in rows:
        if metric.startswith("pairwise_accuracy"):
            assert 0 <= low <= value <= high <= 1, (eval_set, rung, metric, value, low, high)
        if eval_set == "plain" and metric == "pairs_too_long":
            assert (value, n) == (1, 7)
        if eval_set == "plain" and metric == "pairwise_accuracy_real":
            assert n == 6  # the long pair is left out of the accuracy
        if eval_set in ("labelled", "chat") and metric.startswith("pairwise_accuracy"):
            assert n == 6


@pytest.mark.parametrize("judge, rung", [("run:shared/round=1/judge", "fine-tuned"), ("base", "base few-shot"),
                                         ("run:shared/round=2/judge", "self-distilled")])
def test_judge_quality_says_what_alma_data_judge_says(measured, sets, judge, rung):
    runs, _ = measured
    out = run_cli("judge", str(sets / "labelled.json"), f"judge={judge}", f"runs_dir={runs}", "--format", "json")
    cli = json.loads(out.stdout)
    table = {(m, round(v, 9)) for m, v in _query(
        runs, f"select metric, value from judge_quality where eval_set = 'labelled' and rung = '{rung}' "
              "and metric like 'pairwise_accuracy%'")}
    want = {("pairwise_accuracy_real", round(cli["real_valued"]["accuracy_ties_wrong"][0], 9)),
            ("pairwise_accuracy_real_ties_half", round(cli["real_valued"]["accuracy_ties_half"][0], 9)),
            ("pairwise_accuracy_int", round(cli["integer"]["accuracy_ties_wrong"][0], 9)),
            ("pairwise_accuracy_int_ties_half", round(cli["integer"]["accuracy_ties_half"][0], 9))}
    assert table == want


def test_every_round_scores_its_model_on_the_prompt_sets(measured):
    runs, _ = measured
    means = _query(runs, "select round, eval_set, checkpoint, value, low, high, n from prompt_set_summary "
                         "where metric = 'mean_score' order by all")
    got = {(r[0], r[1], r[2]) for r in means}
    for eval_set, n in (("mt", 4), ("alpaca", 2)):
        assert {(1, eval_set, "base"), (1, eval_set, "m1a"), (2, eval_set, "m2"), (3, eval_set, "m3")} <= got
        assert all(r[6] == n and r[4] <= r[3] <= r[5] for r in means if r[1] == eval_set)
    wins = _query(runs, "select versus, value from prompt_set_summary where round = 3 and eval_set = 'mt' "
                        "and metric = 'win_rate' and checkpoint = 'm3' order by versus")
    assert [w[0] for w in wins] == ["base", "m1a"] and all(0 <= w[1] <= 1 for w in wins)
    cats = _query(runs, "select distinct category from prompt_set_summary where eval_set = 'mt' and category is not null")
    assert sorted(c[0] for c in cats) == ["facts", "math"]
    # every answer scored by the round-1 judge, held fixed across rounds
    assert _query(runs, "select distinct judge from prompt_set_eval") == [("round=1/judge",)]
    answers = _query(runs, "select round, checkpoint, count(*) from prompt_set_eval group by all order by all")
    assert answers == [(1, "base", 6), (1, "m1a", 6), (2, "m2", 6), (3, "m3", 6)]


def test_the_report_plots_the_ladder_and_the_sets(measured):
    runs, _ = measured
    out = run_cli("report", f"runs_dir={runs}", "run=shared")
    assert "judge_quality.png" in out.stderr and "prompt_sets.png" in out.stderr
    md = (runs / "shared" / "report" / "report.md").read_text()
    assert "| labelled | base few-shot, real-valued |" in md and "| mt | 3 | m3 |" in md


@pytest.mark.parametrize("case", ["missing_column", "empty", "no_such_file", "not_pairs", "same_name"])
def test_a_bad_set_is_one_line_and_loses_nothing(measured, sets, tmp_path, case):
    runs, _ = measured
    copy = tmp_path / "runs"
    shutil.copytree(runs / "shared", copy / "shared", ignore=shutil.ignore_patterns("report"))
    bad = tmp_path / "bad.jsonl"
    key, expect = "judge.eval_sets", ""
    if case == "missing_column":
        bad.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n"
                       + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
        expect = f"{bad}:2"
    elif case == "empty":
        bad.write_text("")
        expect = "no rows"
    elif case == "no_such_file":
        bad = tmp_path / "nowhere" / "pairs.jsonl"
        expect = "could not read"
    elif case == "not_pairs":
        bad.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
        expect = "not preference pairs"
    else:
        shutil.copy(sets / "plain.jsonl", tmp_path / "labelled.json")
        bad = f"{tmp_path / 'labelled.json'},{sets / 'labelled.json'}"
        expect = "two sets are called 'labelled'"
    before = {p: p.stat().st_mtime_ns for p in (copy / "shared").rglob("*.parquet")}
    proc = run_cli("build", "round=3", "recipe=tiny", f"runs_dir={copy}", "run=shared", f"{key}={bad}", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = [ln for ln in proc.stderr.splitlines() if "judge.eval_sets" in ln]
    assert line and expect in line[-1], proc.stderr[-2000:]
    after = {p: p.stat().st_mtime_ns for p in (copy / "shared").rglob("*.parquet")}
    assert all(after.get(p) == t for p, t in before.items())  # nothing built is lost or rewritten


def test_status_names_what_a_stopped_forced_build_left_stale(measured, tmp_path):
    """A forced build under a changed recipe that stops early leaves the later outputs made under
    the old one: status calls them stale (the next build redoes them), not done."""
    runs, _ = measured
    copy = tmp_path / "runs"
    shutil.copytree(runs / "shared", copy / "shared", ignore=shutil.ignore_patterns("report"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    proc = run_cli("build", "round=3", "recipe=tiny", f"runs_dir={copy}", "run=shared", "--force",
                   "judge.distill_target=soft", f"judge.eval_sets={bad}", check=False)
    assert proc.returncode != 0 and "missing column 'rejected'" in proc.stderr
    status = run_cli("status", f"runs_dir={copy}", "run=shared").stdout
    stale = [ln for ln in status.splitlines() if " stale " in ln]
    assert any("checkpoint judge" in ln for ln in stale), status  # round 2's judge: distill_target changed
    assert any("judge_sets" in ln for ln in stale), status        # round 1's: the sets changed
    assert "[ok] checkpoint m1a" in status  # what the change does not touch stays done
    assert "next: round 1, table judge_sets (stale)" in status, status
    refused = run_cli("status", f"runs_dir={copy}", "run=shared", "judge.scale=5", check=False)
    assert refused.returncode != 0 and "status does not take ['judge.scale']" in refused.stderr
