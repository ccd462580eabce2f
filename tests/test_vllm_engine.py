"""engine=vllm. The GPU tests need vLLM and CUDA and are skipped without them, with the
reason; the others run the engine against a stand-in ``vllm`` module that answers in the
shapes vLLM's V1 engine documents (``RequestOutput``, ``prompt_logprobs`` as a list whose
first entry is None, then one ``{token_id: Logprob}`` per prompt token, the k-th of ``n``
samples seeded ``seed + k``), so the engine's use of them is checked on any machine."""

import importlib.util
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pytest

from alma_data.engines import EngineError, SamplingParams, load_engine
from alma_data.prompting import RATING_PREFIX, RATING_SUFFIX, judge_question, render_chat


def _gpu_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'alma-data[gpu]' on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    return None


gpu = pytest.mark.skipif(_gpu_reason() is not None, reason=f"engine=vllm: {_gpu_reason()}")

PROMPTS = ["Name a fruit.", "Write one sentence about the sea, please, in a calm tone.", "2+2?"]


@pytest.fixture(scope="module")
def smollm2():
    from alma_data.models import resolve

    return resolve("smollm2-135m")


@pytest.fixture(scope="module")
def engine(smollm2):
    eng = load_engine("vllm", smollm2, dtype="float32")
    yield eng
    eng.close()


@gpu
def test_vllm_samples_n_per_prompt_reproducibly(engine):
    rendered = [render_chat(engine.tokenizer, p) for p in PROMPTS]
    params = SamplingParams(n=4, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=5)
    a = engine.generate(rendered, params)
    b = engine.generate(rendered, params)
    texts = lambda out: [[s.text for s in row] for row in out]
    assert [len(r) for r in a] == [4, 4, 4]
    assert texts(a) == texts(b)
    assert len({s.text for s in a[1]}) > 1
    # n_tokens leaves out the EOS token, as the transformers engine does: 0 if it came first.
    assert all(0 <= s.n_tokens <= 24 and s.finish_reason in ("stop", "length") for r in a for s in r)
    assert engine.stats.tokens_per_second > 0


@gpu
def test_vllm_scores_match_the_transformers_engine(engine, smollm2):
    questions = [render_chat(engine.tokenizer, judge_question(p, "An answer.")) + RATING_PREFIX for p in PROMPTS]
    candidates = [str(s) for s in range(11)]
    ours = engine.score_candidates(questions, candidates, suffix=RATING_SUFFIX)
    ref = load_engine("transformers", smollm2, dtype="float32").score_candidates(questions, candidates, suffix=RATING_SUFFIX)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ours, ref, atol=2e-3)


# -- against a stand-in vllm module (no GPU) --------------------------------------------------
# Keyword names checked against vLLM's own: vllm/entrypoints/llm.py LLM.__init__ (and the
# EngineArgs fields it forwards **kwargs to), vllm/sampling_params.py SamplingParams.
LLM_KWARGS = {"model", "tokenizer", "dtype", "tensor_parallel_size", "gpu_memory_utilization",
              "enable_prefix_caching", "max_num_seqs", "enforce_eager", "seed", "max_model_len",
              "max_logprobs", "data_parallel_size"}
SAMPLING_KWARGS = {"n", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
                   "max_tokens", "logprobs", "prompt_logprobs", "detokenize", "skip_special_tokens"}
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
                res.outputs.append(FakeCompletion(k, f" s{seed}-{length} ", toks, reason))
            out.append(res)
        return out


@pytest.fixture
def fake_vllm(monkeypatch):
    import torch

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    FakeLLM.instances = []
    return module


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


def test_vllm_engine_reads_multi_token_candidates_from_prompt_logprobs(fake_vllm, tiny_model):
    eng = load_engine("vllm", tiny_model)
    questions = ["Rating: [[", "Another question. Rating: [["]
    candidates = [str(s) for s in range(11)]
    probs = eng.score_candidates(questions, candidates, suffix="]]")
    prompts, sps = FakeLLM.instances[-1].calls[-1]
    assert sps[0].prompt_logprobs == 0 and len(prompts) == len(questions) * len(candidates)
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


def test_vllm_engine_copies_the_greedy_sample(fake_vllm, tiny_model):
    eng = load_engine("vllm", tiny_model)
    out = eng.generate(["a"], SamplingParams(n=3, temperature=0.0, max_new_tokens=8))
    assert len(out[0]) == 3 and len({(s.text, s.n_tokens) for s in out[0]}) == 1
    assert eng.stats.generated_tokens == 3 * out[0][0].n_tokens
