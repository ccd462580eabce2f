"""``alma-data judge`` on small local files of every format it reads, with the tiny run's
judge, a model folder and the base model few-shot; real subprocesses."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "France is a country."),
    ("Give me a synonym for happy.", "Joyful.", "Sad."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders are insects with six legs."),
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _judge(tiny_run, *args, check=True):
    proc = run_cli("judge", *args, f"runs_dir={tiny_run}", "run=shared", "--format", "json", check=check)
    return proc, (json.loads(proc.stdout) if proc.returncode == 0 else None)


def _check_accuracy(summary, pairs):
    assert summary["kind"] == "pairs" and summary["rows"] == pairs and summary["pairs_measured"] == pairs
    for key in ("real_valued", "integer"):
        a = summary[key]
        assert a["pairs"] == pairs and 0 <= a["ties"] <= pairs
        for name in ("accuracy_ties_wrong", "accuracy_ties_half"):
            point, low, high = a[name]
            assert 0 <= low <= point <= high <= 1
        # ties count wrong in one and as half in the other
        assert a["accuracy_ties_half"][0] == pytest.approx(a["accuracy_ties_wrong"][0] + 0.5 * a["ties"] / pairs)


def test_pair_formats_score_alike(tiny_run, tmp_path):
    """Text pairs, TRL's conversational pairs, binarised pairs (chosen holds the user's turn) and
    {input, output_1, output_2, label} as Parquet give the same scores for the same texts."""
    text = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    trl = _jsonl(tmp_path / "trl.jsonl", [{"prompt": [{"role": "user", "content": p}],
                                            "chosen": [{"role": "assistant", "content": c}],
                                            "rejected": [{"role": "assistant", "content": r}]} for p, c, r in PAIRS])
    binarised = _jsonl(tmp_path / "binarised.jsonl", [
        {"prompt": p, "chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
         "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, c, r in PAIRS])
    labelled = tmp_path / "labelled.parquet"
    # label 2 where output_2 is the better one: the pair is flipped back
    pq.write_table(pa.Table.from_pylist([
        {"input": p, "output_1": c if i % 2 == 0 else r, "output_2": r if i % 2 == 0 else c, "label": 1 if i % 2 == 0 else 2}
        for i, (p, c, r) in enumerate(PAIRS)]), labelled)
    scores = {}
    for name, path in (("text", text), ("trl", trl), ("binarised", binarised), ("labelled", labelled)):
        out = tmp_path / f"{name}.parquet"
        proc, summary = _judge(tiny_run, str(path), "judge=run:shared/round=1/judge", "--out", str(out))
        _check_accuracy(summary, len(PAIRS))
        assert "pairs (6 responses) scored with run:shared/round=1/judge" in proc.stderr
        assert "responses/s" in proc.stderr
        table = pq.read_table(out).to_pylist()
        assert [r["chosen"] for r in table] == [c for _, c, _ in PAIRS]
        assert all(len(r["probs_chosen"]) == 11 and abs(sum(r["probs_chosen"]) - 1) < 1e-4 for r in table)
        scores[name] = [(r["score_chosen"], r["score_rejected"]) for r in table]
    for name in ("trl", "binarised", "labelled"):
        np.testing.assert_allclose(scores[name], scores["text"], atol=1e-6)


def test_single_responses_conversations_and_a_dataset_folder(tiny_run, tmp_path):
    import datasets

    single = _jsonl(tmp_path / "single.jsonl", [{"prompt": p, "response": c} for p, c, _ in PAIRS])
    conv = _jsonl(tmp_path / "conv.jsonl", [{"messages": [
        {"role": "user", "content": "Hi, I need help with a sum."}, {"role": "assistant", "content": "Sure, which one?"},
        {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]}])
    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]).save_to_disk(str(folder))
    _, summary = _judge(tiny_run, str(single), "judge=run:shared/round=1/judge", "--out", str(tmp_path / "s.parquet"))
    assert summary["kind"] == "single" and summary["responses_scored"] == 3 and 0 <= summary["mean_score"] <= 10
    out = tmp_path / "c.parquet"
    _, summary = _judge(tiny_run, str(conv), "judge=run:shared/round=1/judge", "--out", str(out))
    (row,) = pq.read_table(out).to_pylist()
    assert row["response"] == "2 + 2 = 4."
    assert row["prompt"].startswith("User: Hi, I need help") and "Assistant: Sure, which one?" in row["prompt"]
    _, summary = _judge(tiny_run, str(folder), "judge=run:shared/round=1/judge")
    _check_accuracy(summary, len(PAIRS))
    files = tmp_path / "files"  # a folder of plain data files, read by the datasets library (split "train")
    files.mkdir()
    _jsonl(files / "part-0.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS[:2]])
    _jsonl(files / "part-1.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS[2:]])
    _, summary = _judge(tiny_run, str(files), "judge=run:shared/round=1/judge")
    _check_accuracy(summary, len(PAIRS))


def test_long_inputs_are_counted_not_cut(tiny_run, tmp_path):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    rows.append({"prompt": "Summarise this.", "chosen": "word " * 400, "rejected": "Short."})
    path = _jsonl(tmp_path / "long.jsonl", rows)
    out = tmp_path / "long.parquet"
    proc, summary = _judge(tiny_run, str(path), "judge=run:shared/round=1/judge", "--out", str(out))
    assert summary["too_long"] == 1 and summary["pairs_too_long"] == 1 and summary["pairs_measured"] == 3
    assert "1 over judge.max_length=192 left out" in proc.stderr
    last = pq.read_table(out).to_pylist()[-1]
    assert last["too_long"] and last["score_chosen"] is None and last["n_tokens_chosen"] > 192
    _, summary = _judge(tiny_run, str(path), "judge=run:shared/round=1/judge", "long=score")
    assert summary["pairs_measured"] == 4 and summary["too_long"] == 1
    _, summary = _judge(tiny_run, str(path), "judge=run:shared/round=1/judge", "judge.max_length=4096")
    assert summary["too_long"] == 0 and summary["pairs_measured"] == 4
    text = run_cli("judge", str(path), "judge=run:shared/round=1/judge", f"runs_dir={tiny_run}").stdout
    assert "real-valued" in text and "integer" in text and "ties half" in text and "left out" in text


def test_base_model_few_shot_and_a_model_folder(tiny_run, tiny_model, tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    proc, summary = _judge(tiny_run, str(path), "judge=base", "shots=2", "judge.max_length=4096")
    assert summary["judge"] == "base shots=2"
    _check_accuracy(summary, len(PAIRS))
    _, plain = _judge(tiny_run, str(path), f"judge={tiny_model}", "judge.max_length=4096")
    _check_accuracy(plain, len(PAIRS))
    # the base model zero-shot is the tiny model: the few-shot examples change its scores
    _, zero = _judge(tiny_run, str(path), "judge=base", "shots=0", "judge.max_length=4096")
    assert zero["real_valued"] == plain["real_valued"]


def test_few_shot_examples_span_the_scale():
    from alma_data.judges import Shot, pick_shots

    pool = [Shot(f"p{i}", f"r{i}", s) for i, s in enumerate([0, 2, 5, 5, 5, 7, 9, 10, 10])]
    picked = pick_shots(pool, 3, seed=1)
    assert len(picked) == 3 and {s.score for s in picked} >= {0, 10}
    assert pick_shots(pool, 3, seed=1) == picked


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "Hi", "chosen": "Hello"}], "missing column 'rejected'"),
    ([{"prompt": "Hi"}], "missing column 'response'"),
    ([{"input": "Hi", "output_1": "a", "output_2": "b"}], "missing column 'label'"),
    ([{"question": "Hi", "answer": "a"}], "no known format fits the columns"),
    ([], "no rows; the file is empty"),
    ([{"input": "Hi", "output_1": "a", "output_2": "b", "label": 0}], "label must be 1 or 2"),
])
def test_bad_files_are_one_line_errors(tiny_run, tmp_path, rows, message):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    proc = run_cli("judge", str(path), "judge=run:shared/round=1/judge", f"runs_dir={tiny_run}", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("judge, message", [
    ("run:shared/round=7/judge", "does not exist"),
    ("run:nosuchrun/round=1/judge", "does not exist"),
    ("/no/such/model/folder", "unknown model"),
])
def test_a_judge_that_does_not_exist(tiny_run, tmp_path, judge, message):
    path = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Hi", "chosen": "Hello!", "rejected": "No."}])
    proc = run_cli("judge", str(path), f"judge={judge}", f"runs_dir={tiny_run}", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
