"""Damage to a finished run: ``status`` and ``verify`` name the damaged file, nothing reads it,
and a build writes again exactly what is damaged (and what was built from it), byte for byte.

One real tiny round-2 build per module; each case damages a copy of it.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alma_data.store.integrity import DamageError, check_table
from alma_data.store import Store, StoreError, local_model_path
from conftest import run_cli

RUN = "v"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("verify") / "runs"
    run_cli("build", "round=2", "recipe=tiny", f"runs_dir={runs}", f"run={RUN}")
    return runs


def shard_hashes(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in run.glob("round=*/*/part-*.parquet")}


def rewrite_one_response(run: Path) -> Path:
    path = run / "round=2/responses/part-00001.parquet"
    t = pq.read_table(path)
    texts = t.column("response").to_pylist()
    texts[0] = texts[0] + " (edited)"
    i = t.schema.get_field_index("response")
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array(texts, t.schema.field(i).type)), path, compression="zstd")
    return path


def flip_a_byte_in_a_text(run: Path) -> Path:
    """One bit of one character of a prompt, where the text lies raw in the file."""
    path = run / "round=2/prompts/part-00000.parquet"
    data = bytearray(path.read_bytes())
    for text in pq.read_table(path, columns=["prompt"]).column("prompt").to_pylist():
        raw = text.encode()
        for start in range(0, max(1, len(raw) - 8)):
            at = data.find(raw[start:start + 8]) if len(raw) >= 8 else -1
            if at >= 0 and chr(data[at + 4]).isalpha():
                data[at + 4] ^= 0x01  # a letter stays a letter: the file still reads, with another text
                path.write_bytes(bytes(data))
                return path
    raise AssertionError("no prompt lies raw in the shard")


def delete_shard(run: Path) -> Path:
    path = run / "round=2/judgments/part-00001.parquet"
    path.unlink()
    return path


def truncate_shard(run: Path) -> Path:
    path = run / "round=2/prompt_candidates/part-00002.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def garble_manifest(run: Path) -> Path:
    path = run / "round=2/sft/_manifest.json"
    path.write_text('{"shards": [garbage')
    return path


def delete_weights(run: Path) -> Path:
    path = run / "round=2/checkpoints/m2/model.safetensors"
    path.unlink()
    return path


# (damage, what status/verify say about the file, the stages the repair runs (round 2))
CASES = {
    "one response changed": (rewrite_one_response, "bytes where the manifest recorded", {"responses"}),
    "a byte flipped in a text": (flip_a_byte_in_a_text, "sha256", {"rebalance prompts"}),
    "a shard deleted": (delete_shard, "missing", {"judgments"}),
    "a shard cut in half": (truncate_shard, "bytes where the manifest recorded", {"prompt candidates"}),
    "garbage in a manifest": (garble_manifest, "not valid JSON", {"sft"}),
    "a checkpoint's weights deleted": (delete_weights, "missing", {"train m2"}),
}


def last_build_ran(run: Path) -> set[str]:
    record = json.loads((run / "builds.jsonl").read_text().splitlines()[-1])
    return {f"round={s['round']}/{s['stage']}" for s in record["stages"] if not s["skipped"]}


@pytest.mark.parametrize("case", list(CASES))
def test_damage_is_named_refused_and_repaired_byte_for_byte(built, tmp_path, case):
    damage, problem, stages = CASES[case]
    runs = tmp_path / "runs"
    shutil.copytree(built / RUN, runs / RUN, symlinks=True)
    run = runs / RUN
    before = shard_hashes(built / RUN)
    damaged = damage(run)
    rel = str(damaged.relative_to(run))
    where = [f"runs_dir={runs}", f"run={RUN}"]

    shown = run_cli("status", *where, check=False)
    assert shown.returncode == 1, shown.stderr[-2000:]  # status reports damage with a non-zero exit
    status = shown.stdout
    assert "damaged" in status and rel in status, status
    line = next(line for line in status.splitlines() if rel in line)
    assert problem in line, line
    assert f"alma-data build round=2 run={RUN} runs_dir={runs}" in status

    verify = run_cli("verify", "--quiet", *where, check=False)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    named = [line for line in verify.stdout.splitlines() if line.startswith("damaged:")]
    assert len(named) == 1 and rel in named[0], verify.stdout
    assert "1 damaged" in verify.stdout and "MB/s" in verify.stdout

    if "checkpoints" not in rel:  # nothing reads a damaged table: one line naming the file
        table = rel.split("/")[1]
        query = run_cli("query", *where, f"select count(*) from {table}", check=False)
        assert query.returncode == 2 and rel in query.stderr and "Traceback" not in query.stderr, query.stderr
        assert len(query.stderr.strip().splitlines()) == 1
        healthy = "prompts" if table != "prompts" else "sft"  # the run's other tables still answer
        assert run_cli("query", *where, f"select count(*) from {healthy}", check=False).returncode == 0

    build = run_cli("build", "round=2", *where)
    assert "damaged" in build.stderr and rel in build.stderr
    assert last_build_ran(run) == {f"round=2/{s}" for s in stages}
    assert shard_hashes(run) == before
    if "checkpoints" in rel:
        assert hashlib.sha256(damaged.read_bytes()).digest() == \
            hashlib.sha256((built / RUN / rel).read_bytes()).digest()
    after = run_cli("verify", "--quiet", *where)
    assert "all intact" in after.stdout


def test_no_reader_gets_a_damaged_table_or_checkpoint(built, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(built / RUN, runs / RUN, symlinks=True)
    store = Store(runs, RUN)
    assert store.read(2, "judgments").num_rows == 16
    delete_shard(runs / RUN)
    # A fresh store: what an earlier read checked is not taken on trust in another process.
    store = Store(runs, RUN)
    with pytest.raises(DamageError, match="part-00001.parquet: missing"):
        store.read(2, "judgments")
    with pytest.raises(DamageError, match="judgments"):
        store.files(2, "judgments")
    assert [d.problem for d in check_table(store, 2, "judgments")] == ["missing"]
    assert store.read(2, "responses").num_rows == 16  # the other tables still read
    delete_weights(runs / RUN)
    with pytest.raises(StoreError, match="model.safetensors: missing"):
        local_model_path(store.checkpoint_location(2, "m2"))
    assert local_model_path(store.checkpoint_location(2, "judge"))


def test_damage_in_a_bucket_is_found_by_the_cheap_check_and_by_verify(s3_server, tmp_path, monkeypatch, tiny_model):
    from alma_data.store.integrity import check_checkpoint, verify_run
    from alma_data.store import write_table

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALMA_DATA_CACHE", str(tmp_path / "cache"))
    uri = s3_server()
    store = Store(uri, "r")
    store.write_run({"name": "x"}, "fp")
    schema = pa.schema([("id", pa.string()), ("x", pa.int64())])
    write_table(store, 1, "t", [{"id": f"r{i}", "x": i} for i in range(10)], config_hash="h", schema=schema,
                shard_rows=4)
    staging = store.checkpoint_staging(1, "m")
    shutil.copytree(tiny_model, staging)
    store.commit_checkpoint(staging, 1, "m", {"config_hash": "h"})
    report = verify_run(store, progress=False)
    assert not report.damage and report.files == 3 + len(store.checkpoint_manifest(1, "m")["files"])
    assert check_table(store, 1, "t") == [] and check_checkpoint(store, 1, "m") == []

    # Shard 1 written again with its rows in another order (other bytes), a second later: an
    # object store may keep modification times to the second.
    import time

    time.sleep(1.1)
    shard = f"{store.table_dir(1, 't')}/part-00001.parquet"  # a path on the bucket's filesystem
    t = pq.read_table(shard, filesystem=store.arrow_fs)
    pq.write_table(t.take([3, 2, 1, 0]), shard, filesystem=store.arrow_fs, compression="zstd")
    store.fs.rm_file(f"{store.checkpoint_path(1, 'm')}/config.json")
    fresh = Store(uri, "r")
    found = verify_run(fresh, progress=False).damage
    assert [d.where.rsplit("/", 1)[-1] for d in found] == ["config.json", "part-00001.parquet"]
    assert found[0].problem == "missing"
    assert [d.where.rsplit("/", 1)[-1] for d in check_table(fresh, 1, "t")] == ["part-00001.parquet"]
    assert [d.problem for d in check_checkpoint(fresh, 1, "m")] == ["missing"]
    with pytest.raises(DamageError, match="part-00001.parquet"):
        fresh.read(1, "t")
    proc = run_cli("verify", "--quiet", f"runs_dir={uri}", "run=r", check=False)
    assert proc.returncode == 1 and proc.stdout.count("damaged: s3://") == 2, proc.stdout + proc.stderr


def test_a_copy_without_its_times_is_intact_and_a_build_records_the_new_times(built, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(built / RUN, runs / RUN, symlinks=True, copy_function=shutil.copy)  # cp -r: new times
    store = Store(runs, RUN)
    moved: list = []
    assert check_table(store, 2, "responses", moved=moved) == []
    assert len(moved) == len(store.manifest(2, "responses")["shards"])  # each hashed, found unchanged
    assert "damaged" not in run_cli("status", f"runs_dir={runs}", f"run={RUN}").stdout
    build = run_cli("build", "round=2", f"runs_dir={runs}", f"run={RUN}")
    assert "nothing to do" in build.stderr
    assert last_build_ran(runs / RUN) == set()
    moved = []
    assert check_table(Store(runs, RUN), 2, "responses", moved=moved) == [] and moved == []
    assert shard_hashes(runs / RUN) == shard_hashes(built / RUN)
