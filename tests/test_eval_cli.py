"""``alma-data eval`` on small prompt files of each format, answered by the tiny run's
checkpoints and scored by its round-1 judge; real subprocesses, results read back by SQL."""

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it rhyme."]},
    {"question_id": 82, "category": "writing", "turns": ["Write a limerick about a cat."]},
    {"question_id": 83, "category": "math", "turns": ["What is 12 times 12?"]},
    {"question_id": 84, "category": "math", "turns": ["Is 91 a prime number?"]},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the shared tiny run: eval writes tables into the run it evaluates."""
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run / "shared", runs / "shared")
    return runs


def _query(runs, sql):
    return json.loads(run_cli("query", f"runs_dir={runs}", "run=shared", "--format", "json", sql).stdout)


def test_eval_compares_base_m1a_and_last(run_copy, tmp_path):
    questions = _jsonl(tmp_path / "question.jsonl", QUESTIONS)
    proc = run_cli("eval", str(questions), f"runs_dir={run_copy}", "run=shared", "max_new_tokens=8")
    out = proc.stdout
    assert "eval set 'question': 4 prompts, judged by run:round=1/judge" in out
    for cp in ("base", "m1a", "m3"):
        assert f"\n  {cp} " in out
    assert "m3 vs base: win rate" in out and "m3 vs m1a: win rate" in out and "at equal length" in out
    assert "per category" in out and "math:" in out and "writing:" in out
    assert "4 prompts x 3 checkpoints answered and judged" in proc.stderr
    rows = _query(run_copy, "select checkpoint, count(*) as n, max(n_tokens) as longest, round from user_eval "
                            "group by all order by checkpoint")
    assert [(r["checkpoint"], r["n"], r["round"]) for r in rows] == [("base", 4, 3), ("m1a", 4, 3), ("m3", 4, 3)]
    assert all(r["longest"] <= 8 for r in rows)
    # the first turn of each question, greedy: the same answers again on a second run
    first = _query(run_copy, "select prompt from user_eval where checkpoint = 'base' order by prompt_id")
    assert first[0]["prompt"] == "Write a haiku about rain."
    summary = _query(run_copy, "select metric, checkpoint, versus, category, value, low, high, n from user_eval_summary")
    metrics = {(r["metric"], r["checkpoint"], r["versus"], r["category"]): r for r in summary}
    for cp in ("base", "m1a", "m3"):
        m = metrics[("mean_score", cp, None, None)]
        assert m["low"] <= m["value"] <= m["high"] and m["n"] == 4
        assert ("category_mean_score", cp, None, "math") in metrics
    for other in ("base", "m1a"):
        w = metrics[("win_rate", "m3", other, None)]
        assert 0 <= w["low"] <= w["value"] <= w["high"] <= 1
        for key in ("difference_at_equal_length", "win_rate_at_equal_length", "slope_per_100_tokens",
                    "mean_length_difference", "length_share", "score_difference"):
            assert (key, "m3", other, None) in metrics


def test_other_formats_and_sets_side_by_side(run_copy, tmp_path):
    alpaca = tmp_path / "alpaca.json"  # one JSON array, as AlpacaEval ships it
    alpaca.write_text(json.dumps([{"instruction": "Name three fruits.", "dataset": "helpful"},
                                  {"instruction": "Translate to French:", "input": "Good morning", "dataset": "helpful"}]))
    prompts = _jsonl(tmp_path / "mine.jsonl", [{"prompt": "Say hello."}, {"prompt": "Count to three."}])
    run_cli("eval", str(alpaca), f"runs_dir={run_copy}", "run=shared", "max_new_tokens=4", "models=base,m1a")
    run_cli("eval", str(prompts), f"runs_dir={run_copy}", "run=shared", "max_new_tokens=4", "models=m1a,m2", "name=mine")
    sets = _query(run_copy, "select eval_set, checkpoint, count(*) as n from user_eval group by all order by all")
    assert [(r["eval_set"], r["checkpoint"], r["n"]) for r in sets] == [
        ("alpaca", "base", 2), ("alpaca", "m1a", 2), ("mine", "m1a", 2), ("mine", "m2", 2)]
    joined = _query(run_copy, "select prompt, category from user_eval where eval_set = 'alpaca' and checkpoint = 'base' "
                              "order by prompt")
    assert joined[1] == {"prompt": "Translate to French:\n\nGood morning", "category": "helpful"}
    # the same set again replaces its rows, keeping the others
    run_cli("eval", str(prompts), f"runs_dir={run_copy}", "run=shared", "max_new_tokens=4", "models=base,m2", "name=mine")
    sets = _query(run_copy, "select eval_set, checkpoint, count(*) as n from user_eval group by all order by all")
    assert [(r["eval_set"], r["checkpoint"]) for r in sets] == [
        ("alpaca", "base"), ("alpaca", "m1a"), ("mine", "base"), ("mine", "m2")]


@pytest.mark.parametrize("rows, extra, message", [
    ([{"question": "Hi"}], [], "missing column 'prompt'"),
    ([], [], "no rows; the file is empty"),
    ([{"prompt": "Hi"}], ["judge=run:round=9/judge"], "does not exist"),
    ([{"prompt": "Hi"}], ["judge=/no/such/judge"], "unknown model"),
    ([{"prompt": "Hi"}], ["models=base,m9"], "has no checkpoint 'm9'"),
])
def test_eval_errors_are_one_line(tiny_run, tmp_path, rows, extra, message):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    proc = run_cli("eval", str(path), f"runs_dir={tiny_run}", "run=shared", *extra, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_length_controlled_comparison_separates_length_from_quality():
    import numpy as np

    from alma_data.intervals import length_controlled

    rng = np.random.default_rng(0)
    len_b = rng.integers(50, 150, 40).astype(float)
    len_a = len_b + rng.integers(0, 200, 40)
    score_b = 5 + rng.normal(0, 0.05, 40)
    # a judge that only likes length: all of A's lead is length
    only_length = length_controlled(score_b + 0.01 * (len_a - len_b), score_b, len_a, len_b)
    assert only_length["score_difference"][0] > 0.5
    assert abs(only_length["difference_at_equal_length"][0]) < 0.1 and only_length["length_share"] > 0.9
    assert only_length["slope_per_100_tokens"][0] == pytest.approx(1.0, abs=0.1)
    # A better by one point whatever the length: none of it is length
    better = length_controlled(score_b + 1.0 + rng.normal(0, 0.05, 40), score_b, len_a, len_b)
    assert better["difference_at_equal_length"][0] == pytest.approx(1.0, abs=0.15) and abs(better["length_share"]) < 0.15
    low, high = better["difference_at_equal_length"][1:]
    assert low < 1.0 < high or abs(low - 1.0) < 0.15
