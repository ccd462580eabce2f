"""engine=vllm on a real GPU. Without vLLM and CUDA these tests are skipped, with the reason."""

import importlib.util

import numpy as np
import pytest

from alma_data.engines import SamplingParams, load_engine
from alma_data.prompting import RATING_PREFIX, RATING_SUFFIX, judge_question, render_chat


def _gpu_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'alma-data[gpu]' on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    return None


pytestmark = pytest.mark.skipif(_gpu_reason() is not None, reason=f"engine=vllm: {_gpu_reason()}")

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


def test_vllm_samples_n_per_prompt_reproducibly(engine):
    rendered = [render_chat(engine.tokenizer, p) for p in PROMPTS]
    params = SamplingParams(n=4, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=5)
    a = engine.generate(rendered, params)
    b = engine.generate(rendered, params)
    texts = lambda out: [[s.text for s in row] for row in out]
    assert [len(r) for r in a] == [4, 4, 4]
    assert texts(a) == texts(b)
    assert len({s.text for s in a[1]}) > 1
    assert all(0 < s.n_tokens <= 24 and s.finish_reason in ("stop", "length") for r in a for s in r)
    assert engine.stats.tokens_per_second > 0


def test_vllm_scores_match_the_transformers_engine(engine, smollm2):
    questions = [render_chat(engine.tokenizer, judge_question(p, "An answer.")) + RATING_PREFIX for p in PROMPTS]
    candidates = [str(s) for s in range(11)]
    ours = engine.score_candidates(questions, candidates, suffix=RATING_SUFFIX)
    ref = load_engine("transformers", smollm2, dtype="float32").score_candidates(questions, candidates, suffix=RATING_SUFFIX)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ours, ref, atol=2e-3)
