"""Each stage's own peak memory in builds.jsonl, status and the report; the line before a
training that would not fit."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from alma_data.memory import AVAILABLE_ENV, StagePeak, model_shape, training_estimate
from alma_data.store import Store
from conftest import run_cli

MIB = 1024 * 1024


def built(runs, run="shared") -> dict:
    """The record of the build that made the shared run: its first. A test on another file may
    have run ``build`` on it again since (nothing to do: every stage skipped), on this worker."""
    return json.loads((runs / run / "builds.jsonl").read_text().splitlines()[0])


def test_every_stage_of_a_tiny_build_records_its_own_peak(tiny_run):
    build = built(tiny_run)
    stages = build["stages"]
    assert len(stages) > 20
    for rec in stages:
        assert rec["peak_from"] in ("VmHWM", "sampled"), rec
        assert isinstance(rec["peak_memory_mib"], int) and rec["peak_memory_mib"] > 50, rec
        # a stage's peak is at least what the process held when it started (a few MiB of slack:
        # the start is read before the mark is reset)
        assert rec["peak_memory_mib"] >= rec["start_memory_mib"] - 8, rec
    # the peaks are the stages' own: they differ (a cumulative ru_maxrss would only grow)
    peaks = [rec["peak_memory_mib"] for rec in stages]
    assert any(b < a for a, b in zip(peaks, peaks[1:])), peaks
    assert build["peak_memory_mib"] >= max(peaks)


def test_status_and_report_show_each_stage_peak(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run / "shared", runs / "shared")
    recorded = {(r["round"], r["stage"]): r["peak_memory_mib"] for r in built(runs)["stages"]}
    out = run_cli("status", f"runs_dir={runs}", "run=shared").stdout
    done = [line for line in out.splitlines() if line.startswith("  [ok]")]
    # "; peak 812 MiB", or "; peak 812 MiB + 1,530 MiB in its processes" for a stage that started some
    assert done and all(re.search(r"; peak [0-9,]+ MiB( \+ [0-9,]+ MiB in its processes)?$", line)
                        for line in done), out
    # the figure shown is the one recorded for that stage: round 1's m1a
    m1a = next(line for line in done if " m1a " in line)
    assert f"peak {recorded[(1, 'train m1a')]:,} MiB" in m1a
    run_cli("report", f"runs_dir={runs}", "run=shared")
    report = (runs / "shared" / "report" / "report.md").read_text()
    assert "each stage's own peak memory" in report
    assert f"| 1 | train m1a | " in report and f" | {recorded[(1, 'train m1a')]} |" in report


@pytest.mark.parametrize("sample", [False, True], ids=["VmHWM", "sampled"])
def test_a_stage_peak_is_its_own_allocation(sample):
    """200 MiB touched inside a stage shows in its peak, and is gone from the next one's."""
    first = StagePeak(sample_self=sample).start()
    block = np.ones(200 * MIB // 8)
    if sample:  # the sampling thread reads every 0.2 s: hold the block past a few reads
        first._stop.wait(1.0)
    del block
    a = first.stop()
    assert a["peak_from"] == ("sampled" if sample else "VmHWM")
    assert a["peak_memory_mib"] - a["start_memory_mib"] >= 180, a
    b = StagePeak(sample_self=sample).start().stop()
    assert b["peak_memory_mib"] - b["start_memory_mib"] < 50, b
    assert b["peak_memory_mib"] < a["peak_memory_mib"] - 150, (a, b)


def test_a_stage_peak_counts_the_processes_it_starts():
    meter = StagePeak().start()
    subprocess.run([sys.executable, "-c", "import time; b = bytearray(300 * 1024 * 1024); time.sleep(1.5)"],
                   check=True)
    rec = meter.stop()
    assert rec["children_peak_memory_mib"] >= 290, rec
    assert rec["peak_memory_mib"] - rec["start_memory_mib"] < 100, rec  # not this process's


def test_model_shape_counts_the_parameters(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    shape = model_shape(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert (shape.hidden, shape.layers, shape.vocab) == (model.config.hidden_size, model.config.num_hidden_layers,
                                                         model.config.vocab_size)
    mib, what = training_estimate(shape, batch_size=8, max_length=128, trainer="sft")
    assert mib > 16 * shape.params / MIB and "AdamW" in what
    # DPO's pairs double the rows; no checkpointing keeps every layer's activations
    assert training_estimate(shape, batch_size=8, max_length=128, trainer="dpo")[0] > mib
    assert training_estimate(shape, batch_size=8, max_length=128, trainer="sft", gradient_checkpointing=False)[0] > mib


def test_a_training_that_would_not_fit_says_so_in_one_line(tiny_run, tmp_path, monkeypatch):
    """m3 trained again with the memory available said to be 1 MiB: one warning line, and the
    build goes on; with plenty, none."""
    for available, warned in (("1", True), ("10000000", False)):
        runs = tmp_path / available
        shutil.copytree(tiny_run / "shared", runs / "shared")
        shutil.rmtree(runs / "shared" / "round=3" / "checkpoints" / "m3")
        monkeypatch.setenv(AVAILABLE_ENV, available)
        err = run_cli("build", "round=3", "run=shared", f"runs_dir={runs}").stderr
        lines = [line for line in err.splitlines() if "may not fit in memory" in line]
        if warned:
            assert len(lines) == 1, err[-3000:]
            assert lines[0].startswith("[round 3] train m3: may not fit in memory: needs about ")
            assert "0.0 GiB available; lower train.batch_size" in lines[0]
        else:
            assert not lines, lines
        assert Store(runs, "shared").checkpoint_done(3, "m3")
