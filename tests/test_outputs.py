"""What a user takes away from a run: publish (folder and Hub), report, status."""

import json
import os
import shutil

import datasets
import pytest
import yaml

from alma_data.report import build_report
from alma_data.status import run_status
from alma_data.store import Store
from conftest import run_cli


def read_card(folder):
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_publish_folder_loads_with_datasets_config_by_config(tiny_run, tmp_path):
    out = tmp_path / "export"
    run_cli("publish", f"runs_dir={tiny_run}", "repo=someone/alma-tiny", f"to={out}", "raw=true")
    meta, body = read_card(out)
    names = [c["config_name"] for c in meta["configs"]]
    assert names == ["sft", "dpo", "judge_distill", "prompts", "responses", "judgments"]
    assert meta["license"] and meta["language"] == ["en"] and meta["task_categories"] and meta["size_categories"]
    con = Store(tiny_run, "shared").connect()
    for name in names:
        ds = datasets.load_dataset(str(out), name, split="train")
        assert len(ds) == con.execute(f"select count(*) from {name}").fetchone()[0] > 0, name
        assert "round" in ds.column_names
    assert yaml.safe_load((out / "recipe.yaml").read_text())["name"] == "tiny"
    fingerprint = Store(tiny_run, "shared").read_run()["fingerprint"]
    assert fingerprint in body and 'load_dataset("someone/alma-tiny", "sft"' in body
    assert "| `sft` |" in body and "Judge quality" in body


def test_publish_rounds_and_splits_and_errors(tiny_run, tmp_path):
    out = tmp_path / "two"
    run_cli("publish", f"runs_dir={tiny_run}", "repo=someone/x", f"to={out}", "rounds=2", "splits=dpo")
    meta, _ = read_card(out)
    assert [c["config_name"] for c in meta["configs"]] == ["dpo"]
    assert sorted(p.name for p in (out / "dpo").iterdir()) == ["round-002.parquet"]
    bad = run_cli("publish", f"runs_dir={tiny_run}", "repo=someone/x", f"to={out}", "splits=nope", check=False)
    assert bad.returncode == 2 and "publishable: sft, dpo" in bad.stderr
    norepo = run_cli("publish", f"runs_dir={tiny_run}", check=False)
    assert norepo.returncode == 2 and "repo=ORG/NAME" in norepo.stderr
    norun = run_cli("publish", f"runs_dir={tiny_run}", "run=ghost", "repo=a/b", check=False)
    assert norun.returncode == 2 and "no run 'ghost'" in norun.stderr and "shared" in norun.stderr


def test_publish_without_a_token_names_the_fix_and_records_nothing(tiny_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env["HF_HOME"] = str(tmp_path / "hf")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "alma_data", "publish", f"runs_dir={tiny_run}", "repo=someone/x"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "HF_TOKEN" in proc.stderr and "hf auth login" in proc.stderr
    assert not (tiny_run / "shared" / "publish.json").exists()


@pytest.mark.skipif(not os.environ.get("HF_TOKEN") or not os.environ.get("ALMA_DATA_TEST_REPO"),
                    reason="needs HF_TOKEN and ALMA_DATA_TEST_REPO (a dataset repo you may write) to push for real")
def test_publish_to_the_hub_for_real(tiny_run):
    repo = os.environ["ALMA_DATA_TEST_REPO"]
    run_cli("publish", f"runs_dir={tiny_run}", f"repo={repo}", "private=true", timeout=900)
    record = json.loads((tiny_run / "shared" / "publish.json").read_text())
    assert record[-1]["repo"] == repo
    ds = datasets.load_dataset(repo, "sft", split="train")
    assert len(ds) > 0


def test_report_figures_match_direct_sql(tiny_run):
    store = Store(tiny_run, "shared")
    out = build_report(store)
    pngs = {p.stem for p in out.glob("*.png")}
    assert pngs == {"score_histogram", "best_of_n_curve", "heldout_progress", "responses_per_checkpoint",
                    "prompt_lengths", "cluster_coverage", "dedup_funnel", "judge_quality"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out.glob("*.png"))
    html = (out / "report.html").read_text()
    assert all(f"src='{name}.png'" in html for name in pngs)
    md = (out / "report.md").read_text()
    con = store.connect()
    for rnd, mean in con.execute("select round, avg(score) from eval group by all").fetchall():
        assert f"| {rnd} | {mean:.3f} |" in md
    for rnd, ck, n in con.execute("select round, checkpoint, count(*) from responses group by all").fetchall():
        assert f"| {rnd} | {ck} | {n} |" in md


def test_status_on_a_partial_run(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run / "shared", runs / "shared")
    responses = runs / "shared" / "round=3" / "responses"
    (responses / "_manifest.json").unlink()
    (responses / "part-00001.parquet").unlink()
    shutil.rmtree(runs / "shared" / "round=3" / "checkpoints")
    for t in ("judgments", "sft", "dpo", "judge_distill", "eval_answers", "eval"):
        shutil.rmtree(runs / "shared" / "round=3" / t)
    _, items = run_status(Store(runs, "shared"))
    state = {(i.round, i.name): (i.state, i.detail) for i in items}
    assert state[(2, "responses")][0] == "done"
    assert state[(3, "responses")] == ("partial", "2 of 3 shards written")
    assert state[(3, "m3")][0] == "missing" and state[(3, "judgments")][0] == "missing"
    out = run_cli("status", f"runs_dir={runs}", "run=shared").stdout
    assert "round 3: partial" in out and "Resume with: alma-data build round=3 run=shared" in out
    # and the resume it suggests finishes the round
    run_cli("build", "round=3", "run=shared", f"runs_dir={runs}")
    assert all(i.state == "done" for i in run_status(Store(runs, "shared"))[1] if i.round <= 3)
