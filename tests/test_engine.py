import numpy as np
import pytest
import torch

from alma_data.engines import SamplingParams, expected_score, load_engine
from alma_data.prompting import RATING_PREFIX, RATING_SUFFIX, judge_question, render_chat


@pytest.fixture(scope="module")
def engine(tiny_model):
    return load_engine("transformers", tiny_model, dtype="float32", batch_rows=8, score_batch=3)


PROMPTS = ["Name a fruit.", "Write one sentence about the sea, please, in a calm tone.", "2+2?"]


def test_sampling_is_reproducible_for_a_seed_and_varies_across_seeds(engine):
    rendered = [render_chat(engine.tokenizer, p) for p in PROMPTS]
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7)
    a = engine.generate(rendered, params)
    b = engine.generate(rendered, params)
    c = engine.generate(rendered, SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=8))
    texts = lambda out: [[s.text for s in row] for row in out]
    assert len(a) == 3 and all(len(row) == 3 for row in a)
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert all(s.finish_reason in ("stop", "length") and 0 < s.n_tokens <= 12 for row in a for s in row)
    assert engine.stats.generated_tokens > 0 and engine.stats.tokens_per_second > 0


def test_stop_strings_cut_the_text(engine):
    rendered = [render_chat(engine.tokenizer, p) for p in PROMPTS]
    free = engine.generate(rendered, SamplingParams(n=2, temperature=1.0, max_new_tokens=24, seed=3))
    # Stop at a character that appears in the unconstrained samples.
    sample = next(s.text for row in free for s in row if len(s.text) > 4)
    stop = sample[2:4]
    cut = engine.generate(rendered, SamplingParams(n=2, temperature=1.0, max_new_tokens=24, seed=3, stop=[stop]))
    assert all(stop not in s.text for row in cut for s in row)
    assert any(s.finish_reason == "stop" for row in cut for s in row)


def brute_force_probs(engine, prompt, candidates):
    """Full forward pass per candidate, no cache, no batching: the reference."""
    tok = engine.tokenizer
    head = tok(prompt, add_special_tokens=False).input_ids
    logps = []
    for c in candidates:
        ids = engine.candidate_ids(prompt, c)
        with torch.no_grad():
            lp = torch.log_softmax(engine.model(torch.tensor([head + ids])).logits.double(), -1)[0]
        logps.append(sum(lp[len(head) - 1 + k, t].item() for k, t in enumerate(ids)))
    p = np.exp(np.array(logps) - max(logps))
    return p / p.sum()


def test_score_reading_matches_brute_force_with_multi_token_candidates(engine):
    questions = [render_chat(engine.tokenizer, judge_question(p, "An answer.")) + RATING_PREFIX for p in PROMPTS]
    candidates = [str(s) for s in range(11)]
    # "10" is two tokens in this tokenizer, and "1" is its prefix: the suffix tells them apart.
    assert len(engine.candidate_ids(questions[0], "10" + RATING_SUFFIX)) > len(engine.candidate_ids(questions[0], "1" + RATING_SUFFIX))
    # The questions share the judge's instructions: the shared-head path is the one tested.
    from alma_data.engines.transformers_engine import common_prefix

    assert len(common_prefix([engine.tokenizer(q, add_special_tokens=False).input_ids for q in questions])) >= 8
    probs = engine.score_candidates(questions, candidates, suffix=RATING_SUFFIX)
    assert probs.shape == (3, 11)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    for q, row in zip(questions, probs):
        np.testing.assert_allclose(row, brute_force_probs(engine, q, [c + RATING_SUFFIX for c in candidates]), atol=1e-5)


def test_batching_and_padding_do_not_change_scores(engine):
    questions = [render_chat(engine.tokenizer, judge_question(p, "x" * (7 * i))) + RATING_PREFIX
                 for i, p in enumerate(PROMPTS)]
    together = engine.score_candidates(questions, ["0", "5", "10"], suffix="]]")
    alone = np.vstack([engine.score_candidates([q], ["0", "5", "10"], suffix="]]") for q in questions])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_expected_score():
    probs = np.zeros((2, 11))
    probs[0, 7] = 1.0
    probs[1, [6, 8]] = 0.5
    np.testing.assert_allclose(expected_score(probs), [7.0, 7.0])


def test_unknown_and_missing_engines():
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine("nope", "x")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"alma-data\[gpu\]"):
            load_engine("vllm", "x")


@pytest.mark.slow
def test_embedded_smollm2_reads_scores_and_answers():
    from alma_data.models import resolve

    engine = load_engine("transformers", resolve("smollm2-135m"), score_batch=2)
    tok = engine.tokenizer
    assert len(tok("10", add_special_tokens=False).input_ids) == 2  # "1", "0"
    q = render_chat(tok, judge_question("What is the capital of France?", "Paris.")) + RATING_PREFIX
    probs = engine.score_candidates([q], [str(s) for s in range(11)], suffix=RATING_SUFFIX)
    assert probs.shape == (1, 11) and abs(probs.sum() - 1) < 1e-6
    out = engine.generate([render_chat(tok, "What is the capital of France?")],
                          SamplingParams(n=1, temperature=0.0, max_new_tokens=16, seed=0))
    assert "Paris" in out[0][0].text


def test_greedy_decoding_matches_plain_generate_one_sequence_at_a_time(tiny_model):
    """Shared prefill, left padding, cache copies and dropping finished rows change nothing."""
    from alma_data.engines.transformers_engine import TransformersEngine

    eng = TransformersEngine(tiny_model, dtype="float32", batch_rows=3)  # n=2 over 3 rows: units split
    rendered = [render_chat(eng.tokenizer, p) for p in PROMPTS]
    ours = eng.generate(rendered, SamplingParams(n=2, temperature=0.0, max_new_tokens=10, seed=0))
    eos = eng._eos_ids()
    for prompt, row in zip(rendered, ours):
        ids = eng.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            ref = eng.model.generate(ids, do_sample=False, max_new_tokens=10, eos_token_id=eos,
                                     pad_token_id=eng.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        if any(t in eos for t in ref):
            ref = ref[: min(ref.index(t) for t in eos if t in ref)]
        want = eng.tokenizer.decode(ref, skip_special_tokens=True).strip()
        assert [s.text for s in row] == [want, want]
        assert all(s.n_tokens == len(ref) for s in row)


def test_nucleus_sampling_keeps_exactly_the_top_p_head():
    from alma_data.engines.transformers_engine import sample_next

    g = torch.Generator().manual_seed(0)
    vocab = 5000
    # Peaked rows (nucleus inside the first top-k) and flat rows (the top-k has to grow).
    logits = torch.cat([torch.randn(4, vocab, generator=g) * 8, torch.randn(4, vocab, generator=g) * 0.01])
    top_p, temp = 0.9, 0.7
    probs = torch.softmax(logits / temp, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    allowed = []
    for r in range(len(logits)):
        n_keep = int((sorted_p[r].cumsum(0) - sorted_p[r] < top_p).sum())
        allowed.append(set(order[r, :n_keep].tolist()))
    assert len(allowed[0]) < 64 < len(allowed[-1])
    drawn = [set() for _ in logits]
    for _ in range(200):
        for r, t in enumerate(sample_next(logits, temp, top_p, g).tolist()):
            drawn[r].add(t)
    for r in range(len(logits)):
        assert drawn[r] <= allowed[r]
    assert all(t == logits[r].argmax().item() for r, t in enumerate(sample_next(logits, 0.0, top_p, g).tolist()))


def test_batch_size_follows_the_memory_budget(tiny_model):
    from alma_data.engines.transformers_engine import TransformersEngine

    small = TransformersEngine(tiny_model, dtype="float32", batch_rows=0, memory_budget_gb=0.0005)
    big = TransformersEngine(tiny_model, dtype="float32", batch_rows=0, memory_budget_gb=4)
    assert 1 <= small.rows_per_batch(512) < big.rows_per_batch(512) <= 128
    assert small.rows_per_batch(2048) <= small.rows_per_batch(512)
    fixed = TransformersEngine(tiny_model, dtype="float32", batch_rows=5)
    assert fixed.rows_per_batch(512) == 5
