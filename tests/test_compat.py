"""A run built by the code before the stage list and the store package (commit 6e983c6) is
already done for today's code but for the judge ladder's new stages: nothing else runs, and
every other table's rows and every manifest (so every hash) stay byte for byte as they
were; a fresh build of today's code writes the same tables, byte for byte where no trained
weights touched them (:func:`downstream_of_training`).

The old code is taken from this clone's history (``git archive``), so the test needs the
commit: in a shallow clone or an unpacked archive it is skipped and says why.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

from alma_data.store.integrity import checkpoints_used

OLD = "6e983c6"  # main before issue 12 (held-out answers already their own stage, eval_answers)


def old_code(dest: Path) -> Path:
    try:
        found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{OLD}^{{commit}}"], capture_output=True)
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if found.returncode != 0:
        pytest.skip(f"commit {OLD} is not in this clone's history (a shallow clone?)")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.12+, and 3.11.4+
        tar.extractall(dest, **safe)
    return dest


def files_of(run: Path) -> dict[str, str]:
    """sha256 of every file of the run's rounds: shards, manifests, checkpoints."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.glob("round=*/**/*")) if p.is_file()}


def shards_of(run: Path) -> dict[str, list[str]]:
    """Each table's shards as its manifest lists them (sha256, rows): its rows, byte for byte."""
    out = {}
    for p in sorted(run.glob("round=*/*/_manifest.json")):
        out[str(p.parent.relative_to(run))] = [(s["sha256"], s["rows"]) for s in json.loads(p.read_text())["shards"]]
    return out


def downstream_of_training(run: Path) -> set[str]:
    """The tables whose rows trained weights of the run made or chose: scored by a trained
    judge, sampled from a trained checkpoint, a round's held-out answers (its model's), and
    every table built from one of those (the manifests' ``inputs``)."""
    manifests = {str(p.parent.relative_to(run)): json.loads(p.read_text())
                 for p in sorted(run.glob("round=*/*/_manifest.json"))}

    found = {t for t, m in manifests.items() if checkpoints_used(m) or t.endswith("/eval_answers")}
    grew = True
    while grew:
        more = {t for t, m in manifests.items() if t not in found and set(m.get("inputs") or {}) & found}
        found |= more
        grew = bool(more)
    return found


@pytest.mark.e2e
def test_a_run_built_by_the_old_code_is_already_done_and_unchanged(tmp_path, tiny_run):
    old = old_code(tmp_path / "old")
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(old), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "alma_data", "build", "round=3", "recipe=tiny", f"runs_dir={runs}",
                           "run=shared"], cwd=old, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "round 3 built" in proc.stderr
    run = runs / "shared"
    before = files_of(run)

    # Since then the judge ladder came (issue 14): the few-shot base model on the held-out
    # annotations is a new stage, and judge_quality gained its columns (SQL over judge_eval).
    # Those run; nothing else does, and everything else stays byte for byte.
    again = run_cli("build", "round=3", "recipe=tiny", f"runs_dir={runs}", "run=shared")
    record = json.loads((run / "builds.jsonl").read_text().splitlines()[-1])
    ran = [(s["round"], s["stage"]) for s in record["stages"] if not s["skipped"]]
    assert ran == [(1, "judge eval base few-shot"), (1, "judge quality judge"), (2, "judge quality judge")], ran
    new = {"round=1/judge_eval_base", "round=1/judge_quality", "round=2/judge_quality"}
    kept = lambda files: {k: v for k, v in files.items() if not any(k.startswith(t + "/") for t in new)}
    assert kept(files_of(run)) == kept(before)  # every other shard, manifest and checkpoint file
    assert "nothing to do" in run_cli("build", "round=3", "recipe=tiny", f"runs_dir={runs}", "run=shared").stderr

    status = run_cli("status", f"runs_dir={runs}", "run=shared").stdout
    assert "every round of the recipe is built" in status, status

    # Today's code, from nothing (the suite's shared run), writes the same tables with the same
    # rows per shard, and every table no trained weights touched byte for byte the same. Since
    # issue 23's memory work (training/lm_head.py: the SFT loss over labelled rows only, in
    # chunks; the judge's candidates scored as one token tree) the sums run in another order, so
    # trained weights differ in their last bits, and so does all that they wrote or chose.
    # (Not every manifest hash: a judge trained on from round 1's records that folder's path.)
    ours, theirs = shards_of(tiny_run / "shared"), shards_of(run)
    assert sorted(ours) == sorted(theirs)
    assert {t: [rows for _, rows in s] for t, s in ours.items()} == {t: [rows for _, rows in s] for t, s in theirs.items()}
    untrained = sorted(set(theirs) - downstream_of_training(run))
    assert {"round=1/prompts", "round=1/sft", "round=1/judge_seed", "round=2/prompt_candidates"} <= set(untrained)
    assert {t: ours[t] for t in untrained} == {t: theirs[t] for t in untrained}
