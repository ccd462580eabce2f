"""What a build prints: its own lines and one progress bar a stage on the terminal; the
libraries' progress bars off and their logs in the run's log file (``logs/build-<time>.log``),
which holds the build's lines too; ``--verbose`` brings the libraries' output back to the
terminal. The shared tiny build (conftest's ``tiny_build``) runs at 120 columns without
TQDM_DISABLE, as a user's terminal would see it."""

import os
import re
import shutil
import subprocess
import sys

from alma_data.stages.prompts import dedup_words
from alma_data.store import Store

LIBRARY_BARS = ("Loading weights", "Map:", "Map (", "Generating train split", "Adding EOS", "Tokenizing train",
                "Building labels", "Truncating train", "Dropping fully masked", "Writing model shards")
"""The descriptions of the progress bars transformers, datasets and TRL draw in a tiny build."""


def screen_lines(text: str) -> list[str]:
    """What a terminal shows, near enough: every line, and every redraw of a progress bar."""
    return [seg for line in text.splitlines() for seg in line.split("\r") if seg.strip()]


def test_a_build_prints_its_own_lines_only(tiny_build):
    runs, text = tiny_build
    lines = screen_lines(text)
    library = [ln for ln in lines if any(bar in ln for bar in LIBRARY_BARS)]
    assert not library, library[:5]
    assert not [ln for ln in lines if ln.lstrip().startswith("{'")], "a raw training-log dict reached the terminal"
    closing = [i for i, ln in enumerate(lines) if ln.startswith("round 3 built: 36 stages run")]
    assert len(closing) == 1, closing
    assert len(lines[closing[0]]) <= 120, lines[closing[0]]  # the counts fit; where to look is the next line
    assert lines[closing[0] + 1].startswith("  look at it with: alma-data query "), lines[closing[0] + 1]
    # numbers in words
    dedup = [ln for ln in lines if "dedup:" in ln]
    assert len(dedup) == 2 and all(re.search(r"^  dedup: \d+ unique of \d+ parsed", ln) for ln in dedup), dedup
    judged = [i for i, ln in enumerate(lines) if "judge quality, heldout" in ln]
    assert len(judged) == 3, judged
    for i in judged:  # the accuracies, then a line saying what they stand on and how ties count
        assert re.search(r"real-valued [\d.]+ \[[\d.]+, [\d.]+\]", lines[i]), lines[i]
        ties = lines[i + 1]
        assert re.search(r"^    pairwise accuracy over \d+ pairs", ties) and ("a tie counting as wrong (" in ties or "(no ties)" in ties), ties
    # every line of ours fits the 120 columns the build was run with, but those naming the test's long
    # temporary runs folder (a progress bar redraws in place)
    wide = [ln for ln in lines if len(ln) > 120 and "%|" not in ln and str(runs) not in ln]
    assert not wide, wide


def test_the_example_after_each_model_says_what_training_changed(tiny_build):
    runs, text = tiny_build
    lines = screen_lines(text)
    store = Store(runs, "shared")
    answers = {r: {a["prompt_id"]: a["response"] for a in store.read(r, "eval_answers").to_pylist()} for r in (1, 2, 3)}
    for r, now, before in ((2, "m2", "m1a"), (3, "m3", "m2")):
        at = next(i for i, ln in enumerate(lines) if f"e.g. {now} on a held-out prompt" in ln)
        changed = sum(answers[r][p] != answers[r - 1][p] for p in answers[r])
        if changed:
            assert f"answer changed from {before} ({changed} of {len(answers[r])} changed)" in lines[at], lines[at]
            shown, had = lines[at + 1].strip(), lines[at + 2].strip()
            assert shown.startswith("-> ") and had.startswith(f"{before} had: "), lines[at:at + 3]
        else:
            assert f"same answer as {before} (all {len(answers[r])} held-out answers unchanged)" in lines[at]


def test_the_run_keeps_the_build_log(tiny_build):
    runs, text = tiny_build
    logs = sorted((runs / "shared" / "logs").glob("build-*.log"))
    assert logs, "no build log in the run"
    log = logs[0].read_text()
    assert f"log: {logs[0]}" in text  # the build says where it is
    # the build's own lines...
    assert "[round 1] train m1a: 44 rows" in log and "round 3 built: 36 stages run" in log
    # ...and the trainer's logs, one line a logging step in words (not the dict it prints)
    assert re.search(r"^  sft step 1/2: loss [\d.]+, grad norm [\d.]+", log, re.M), log[:3000]
    assert re.search(r"^  sft done: train runtime [\d.]+", log, re.M)
    assert "{'loss'" not in log and "{'loss'" not in text


def test_verbose_brings_the_libraries_output_back(tiny_run, tmp_path):
    """A real build of one stage (round 3's held-out answers, its table removed from a copy of
    the shared run) with --verbose: the libraries' bars are on the terminal again, and the
    run's new log holds the build's lines."""
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run / "shared", runs / "shared")
    shutil.rmtree(runs / "shared" / "round=3" / "eval_answers")
    before = set((runs / "shared" / "logs").glob("build-*.log"))
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    proc = subprocess.run([sys.executable, "-m", "alma_data", "build", "round=3", f"runs_dir={runs}", "run=shared",
                           "--verbose"], capture_output=True, text=True, timeout=600, env={**env, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[round 3] held-out answers: 4 rows" in proc.stderr
    assert "Loading weights" in proc.stderr, proc.stderr[-3000:]  # transformers' bar, on the terminal again
    (new,) = set((runs / "shared" / "logs").glob("build-*.log")) - before
    assert "[round 3] held-out answers: 4 rows" in new.read_text()


def test_dedup_counts_in_words():
    assert dedup_words({"unique": 56, "duplicate": 4}, 56) == "56 unique of 60 parsed (4 exact duplicates)"
    assert dedup_words({"unique": 10}, 10) == "10 unique of 10 parsed, no duplicates"
    assert dedup_words({"unique": 9, "duplicate": 1, "used_before": 2, "near_duplicate": 3}, 6) == (
        "6 unique of 12 parsed (1 exact duplicate, 2 exact copies of earlier rounds' prompts, 3 near-duplicates)")
