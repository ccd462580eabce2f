"""Nothing lost, ever (issue 25): no command writes where it was not asked to, verify checks
every claim a manifest makes, and every value is refused before anything is written.

Each case runs the real command on a copy of the session's tiny run and asserts the one line it
prints, its exit code, and that every file of every run is as it was (or, after a repair, as an
undamaged build left it).
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import run_cli

RUN = "shared"


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (every run of the runs folder) -> its sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def runs(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run, and a second run beside it (another run's files are guarded too)."""
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run / RUN, runs / RUN, symlinks=True)
    shutil.copytree(tiny_run / RUN, runs / "other", symlinks=True)
    return runs


def one_line(proc) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("alma-data:")]
    assert len(lines) == 1, err
    return lines[0]


def refused(runs: Path, *args: str, cwd: Path | None = None) -> str:
    before = tree(runs)
    proc = run_cli(*args, check=False, cwd=cwd)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    line = one_line(proc)
    assert tree(runs) == before, "a refused command changed a run"
    return line


def shard(runs: Path, run: str = RUN, table: str = "round=1/sft") -> Path:
    return sorted((runs / run / table).glob("part-*.parquet"))[0]


# -- 1. writes only where asked ----------------------------------------------------------------
def test_query_out_onto_another_runs_shard_is_refused(runs):
    line = refused(runs, "query", f"runs_dir={runs}", f"run={RUN}", "select 1", "--format", "csv",
                   "--out", str(shard(runs, "other")))
    assert "inside the runs folder" in line


def test_query_out_onto_a_hard_link_to_a_shard_is_refused(runs, tmp_path):
    link = tmp_path / "link.parquet"
    os.link(shard(runs), link)
    line = refused(runs, "query", f"runs_dir={runs}", f"run={RUN}", "select 1", "--format", "parquet",
                   "--out", str(link))
    assert "hard link" in line


def test_query_out_onto_a_folder_is_one_line(runs, tmp_path):
    line = refused(runs, "query", f"runs_dir={runs}", f"run={RUN}", "select 1", "--format", "csv",
                   "--out", str(tmp_path))
    assert "is a folder" in line


def test_a_failing_query_leaves_an_existing_csv_as_it_was(runs, tmp_path):
    out = tmp_path / "scores.csv"
    out.write_text("a,b\n1,2\n")
    line = refused(runs, "query", f"runs_dir={runs}", f"run={RUN}", "select 1/0::int, error('boom')",
                   "--format", "csv", "--out", str(out))
    assert line
    assert out.read_text() == "a,b\n1,2\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_query_writes_its_csv_through_a_temporary_name(runs, tmp_path):
    out = tmp_path / "n.csv"
    out.write_text("old\n")
    run_cli("query", f"runs_dir={runs}", f"run={RUN}", "select count(*) as n from sft", "--format", "csv",
            "--out", str(out))
    assert out.read_text().splitlines()[0] == "n"


@pytest.mark.parametrize("target", ["this run", "other run"])
def test_judge_out_onto_a_shard_is_refused_before_scoring(runs, tmp_path, target):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "go"}) + "\n")
    line = refused(runs, "judge", str(pairs), f"runs_dir={runs}", f"run={RUN}", "judge=run:round=1/judge",
                   "--out", str(shard(runs, RUN if target == "this run" else "other")))
    assert "inside the runs folder" in line


def test_publish_dry_run_into_a_table_of_the_run_is_refused(runs):
    line = refused(runs, "publish", f"runs_dir={runs}", f"run={RUN}", "repo=me/x", "--dry-run",
                   f"to={runs / RUN / 'round=1' / 'sft'}")
    assert "inside the runs folder" in line


def test_publish_to_a_folder_holding_files_needs_overwrite(runs, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    line = refused(runs, "publish", f"runs_dir={runs}", f"run={RUN}", "repo=me/x", f"to={folder}")
    assert "--overwrite" in line and (folder / "notes.txt").read_text() == "mine"
    run_cli("publish", f"runs_dir={runs}", f"run={RUN}", "repo=me/x", f"to={folder}", "--overwrite")
    assert not (folder / "notes.txt").exists() and (folder / "README.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- 2. verify checks every claim --------------------------------------------------------------
def edit_manifest(runs: Path, table: str, change) -> None:
    path = runs / RUN / table / "_manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def verify(runs: Path):
    return run_cli("verify", "--quiet", f"runs_dir={runs}", f"run={RUN}", check=False)


CLAIMS = {
    "total edited": (lambda runs: edit_manifest(runs, "round=1/sft", lambda m: m.update(rows=m["rows"] + 1)),
                     "rows but its shards list"),
    "a shard's rows edited": (lambda runs: edit_manifest(runs, "round=1/sft",
                                                         lambda m: m["shards"][0].update(rows=m["shards"][0]["rows"] + 1)),
                              "rows where the manifest recorded"),
    "a shard's entry removed": (lambda runs: edit_manifest(runs, "round=1/sft", lambda m: m["shards"].pop()),
                                "does not list"),
    "a stray shard": (lambda runs: shutil.copy(shard(runs), runs / RUN / "round=1/sft/part-09999.parquet"),
                      "does not list"),
    "a table lost its manifest": (lambda runs: (runs / RUN / "round=1/sft/_manifest.json").unlink(),
                                  "was built from it"),
    "a checkpoint lost its manifest": (lambda runs: (runs / RUN / "round=1/checkpoints/judge/_manifest.json").unlink(),
                                       "was made with it"),
}


@pytest.mark.parametrize("case", list(CLAIMS))
def test_verify_and_status_find_a_false_claim(runs, case):
    damage, problem = CLAIMS[case]
    damage(runs)
    proc = verify(runs)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert problem in proc.stdout, proc.stdout
    assert "repair: alma-data build" in proc.stdout
    # status names it too (a lost manifest: what was built from it says so), and exits 1
    status = run_cli("status", f"runs_dir={runs}", f"run={RUN}", check=False)
    assert status.returncode == 1 and problem in status.stdout, status.stdout


def test_a_shard_replaced_by_a_folder_is_one_line(runs):
    target = shard(runs)
    target.unlink()
    target.mkdir()
    before = tree(runs)
    proc = run_cli("query", f"runs_dir={runs}", f"run={RUN}", "select count(*) from sft", check=False)
    assert proc.returncode == 2 and target.name in one_line(proc)
    assert run_cli("status", f"runs_dir={runs}", f"run={RUN}", check=False).returncode == 1
    assert verify(runs).returncode == 1
    assert (target.parent / "_manifest.json").is_file() and tree(runs) == before


def test_a_damaged_table_blocks_only_its_own_queries(runs):
    edit_manifest(runs, "round=1/sft", lambda m: m["shards"][0].update(rows=m["shards"][0]["rows"] + 1))
    bad = run_cli("query", f"runs_dir={runs}", f"run={RUN}", "select count(*) from sft", check=False)
    assert bad.returncode == 2 and "round=1/sft" in one_line(bad) and "alma-data build" in bad.stderr
    good = run_cli("query", f"runs_dir={runs}", f"run={RUN}", "select count(*) from prompts", "--format", "csv")
    assert good.stdout.splitlines()[0] == "count_star()"


def flip_keeping_size_and_time(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_judge_refuses_a_checkpoint_whose_bytes_changed(runs, tmp_path):
    weights = max((runs / RUN / "round=1/checkpoints/judge").rglob("*.safetensors"), key=lambda p: p.stat().st_size)
    flip_keeping_size_and_time(weights)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "go"}) + "\n")
    line = refused(runs, "judge", str(pairs), f"runs_dir={runs}", f"run={RUN}", "judge=run:round=1/judge")
    assert "sha256" in line and "checkpoints/judge" in line


def test_what_verify_flags_the_next_build_repairs_byte_for_byte(runs, tiny_run):
    target = shard(runs, table="round=3/sft")
    flip_keeping_size_and_time(target)
    assert run_cli("status", f"runs_dir={runs}", f"run={RUN}", check=False).returncode == 0  # not hashed
    stray = runs / RUN / "round=3/sft/part-09999.parquet"
    shutil.copy(target, stray)
    proc = verify(runs)
    assert proc.returncode == 1 and "sha256" in proc.stdout and "part-09999" in proc.stdout
    run_cli("build", "round=3", f"runs_dir={runs}", f"run={RUN}")
    assert target.read_bytes() == shard(tiny_run, table="round=3/sft").read_bytes()
    assert not stray.exists() and list((runs / RUN / "quarantine").rglob("part-09999.parquet.*"))
    assert verify(runs).returncode == 0


def test_a_query_that_meets_changed_bytes_names_the_shard(runs):
    """Bytes changed with the size and time kept pass the cheap check; the query that cannot
    read them hashes the tables it names, names the shard and the repair, and records it as
    verify would, so status then calls the table damaged and the build redoes it."""
    target = max((runs / RUN / "round=2/responses").glob("part-*.parquet"), key=lambda p: p.stat().st_size)
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[64:128] = bytes(b ^ 0xA5 for b in data[64:128])  # the first column's pages (the footer holds)
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    bad = run_cli("query", f"runs_dir={runs}", f"run={RUN}",
                  "select * from responses", check=False)
    assert bad.returncode != 0
    line = one_line(bad)
    assert f"round=2/responses/{target.name}" in line and "sha256" in line and "alma-data build" in line
    status = run_cli("status", f"runs_dir={runs}", f"run={RUN}", check=False)
    assert status.returncode == 1 and target.name in status.stdout + status.stderr
    good = run_cli("query", f"runs_dir={runs}", f"run={RUN}", "select count(*) from prompts", "--format", "csv")
    assert good.stdout.splitlines()[0] == "count_star()"


# -- 3. every value checked before anything is written ------------------------------------------
@pytest.mark.parametrize("args, says", [
    (["responses.n=99999999999999999999999"], "responses.n"),
    (["model="], "model is empty"),
    (["model=nosuch"], "unknown model"),
    (["responses.max_new_tokens=-5"], "responses.max_new_tokens"),
    (["prompts.shots_min=-1"], "prompts.shots_min"),
    (["responses.n=4", "responses.n=8"], "given twice"),
])
def test_a_refused_build_leaves_no_run(tmp_path, args, says):
    runs = tmp_path / "runs"
    proc = run_cli("build", "round=1", "recipe=tiny", f"runs_dir={runs}", "run=new", *args, check=False)
    assert proc.returncode != 0
    assert says in one_line(proc)
    assert not (runs / "new").exists()


@pytest.mark.parametrize("args, says", [
    (["max_new_tokens=-5"], "max_new_tokens=-5"),
    (["shots=-1"], "shots=-1"),
    (["models=base,round=9/m9"], "round=9/m9"),
    (["limit=1", "limit=2"], "given twice"),
])
def test_eval_values_are_refused_before_any_answer(runs, tmp_path, args, says):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    line = refused(runs, "eval", str(prompts), f"runs_dir={runs}", f"run={RUN}", *args)
    assert says in line


def test_a_hub_model_that_cannot_be_had_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """A Hub id neither reachable nor in the local cache: one line before any file is written (it
    was a traceback of transformers' after run.json and the seed tables)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as with no network, without the retries
    runs = tmp_path / "runs"
    proc = run_cli("build", "round=1", "recipe=tiny", f"runs_dir={runs}", "run=new", "model=someone/no-such-model",
                   check=False)
    assert proc.returncode == 2
    line = one_line(proc)
    assert "model=someone/no-such-model" in line and "not in the local cache" in line, line
    assert not (runs / "new").exists()
