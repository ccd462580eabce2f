"""The default recipe's own code path through round 2, on the tiny model.

Only the sizes are cut (and the model swapped for the tiny one): MiniLM embeddings from
the packaged model, near-dedup, k-means, rebalancing, sampling, real-valued judging,
selection, SFT of M2 and the judge's self-distillation all run as `alma-data build
round=2` runs them by default. Any package the default needs that the install does not
bring makes this test fail, which is what keeps `pyproject.toml` honest: CI installs into
an empty virtual environment.
"""

import json

import pytest

from alma_data.config import load_recipe
from alma_data.precision import bf16_native
from alma_data.store import Store
from conftest import run_cli

# Sizes only: every switch of the default recipe keeps its default value.
SMALL = ["model=tiny-random", "seeds.max_sft=48", "seeds.max_judge=64", "seeds.eval_prompts=4",
         "train.max_steps=2", "train.max_length=128", "judge.max_steps=2", "judge.max_length=192",
         "judge.distill_samples=32", "prompts.k=4", "prompts.candidates=16", "prompts.max_new_tokens=24",
         "prompts.keep_truncated=true", "responses.n=4", "responses.max_new_tokens=16", "eval.max_new_tokens=16",
         "store.shard_rows=4"]
SIZE_KEYS = {a.split("=", 1)[0] for a in SMALL}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    proc = run_cli("build", "round=2", "recipe=default", f"runs_dir={runs}", "run=d", *SMALL)
    return Store(runs, "d"), proc


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_only_sizes_differ_from_the_default_recipe(default_run):
    store, _ = default_run
    built = dict(_flat(store.read_run()["recipe"]))
    default = dict(_flat(load_recipe("default").to_dict()))
    changed = {k for k in built if built[k] != default[k]}
    assert changed == SIZE_KEYS
    assert built["prompts.embedder"] == "minilm" and built["prompts.near_dedup"] is True
    assert built["dtype"] == "auto" and built["train.bf16"] == "auto" and built["judge.self_distill"] is True


def test_round2_ran_every_default_stage(default_run):
    store, proc = default_run
    con = store.connect()
    m = store.manifest(2, "prompt_clusters")
    assert m["embedder"] == "minilm" and m["clusters"] >= 4
    # MiniLM's sentence vectors are 384 wide and unit length; the tiny model's hidden size is not 384.
    dims, norm = con.execute("select min(len(embedding)), avg(list_dot_product(embedding, embedding)) "
                             "from prompt_clusters").fetchone()
    assert dims == 384 and abs(norm - 1) < 1e-3
    assert con.execute("select count(*), count(distinct cluster) from prompts where round = 2").fetchone() == (4, 4)
    assert con.execute("select count(*) from responses where round = 2").fetchone()[0] == 16
    n, lo, hi = con.execute("select count(*), min(score), max(score) from judgments where round = 2").fetchone()
    assert n == 16 and 0 <= lo <= hi <= 10
    assert con.execute("select count(*) from sft where round = 2").fetchone()[0] == 4
    for name in ("m2", "judge"):
        assert store.checkpoint_manifest(2, name) is not None, name
    assert store.manifest(2, "judge_quality") is not None and store.manifest(2, "eval") is not None
    assert "round 2 built" in proc.stderr


def test_training_precision_follows_the_hardware_and_is_recorded(default_run):
    store, proc = default_run
    native = bf16_native()
    for r, name in ((1, "m1a"), (1, "judge"), (2, "m2")):
        p = store.checkpoint_manifest(r, name)["precision"]
        assert p["setting"] == "auto" and p["bf16_native"] is native
        assert p["dtype"] == ("bfloat16" if native else "float32")
        assert json.loads((store.checkpoint_dir(r, name) / "training_summary.json").read_text())["spec"]["bf16"] is native
    assert ("in bfloat16 (train.bf16=auto" if native else "in float32 (train.bf16=auto") in proc.stderr


# Flag lines as /proc/cpuinfo prints them on the CPUs this project has met (cut to the relevant flags).
EPYC_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2 sha_ni\n"
XEON_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile\n"
XEON_AVX512 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512vl avx512dq\n"
NEOVERSE_V1 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo, native", [(EPYC_AVX2, False), (XEON_AMX, True), (XEON_AVX512, False),
                                             (NEOVERSE_V1, True)])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    from alma_data.precision import NATIVE_BF16_FLAGS, cpu_flags

    assert bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS) is native
