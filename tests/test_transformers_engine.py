"""The transformers engine's score reading as a token tree (one forward for all candidates, one
cache row a question) gives the probabilities of the former way, which fed every candidate on
its own copy of the question's KV cache: kept below, as it was, as the reference."""

import copy

import numpy as np
import pytest
import torch

from alma_data.engines.transformers_engine import (TransformersEngine, broadcast_cache, common_prefix, token_tree,
                                                   tree_ready)
from alma_data.prompting import RATING_PREFIX, RATING_SUFFIX, judge_question, render_chat

SCORES = [str(s) for s in range(11)]
PROMPTS = ["Name a fruit.", "Write one sentence about the sea, please, in a calm tone.", "2+2?",
           "Explain, in two short paragraphs, why the sky looks blue at noon and red at dusk.", "Hi"]


@torch.inference_mode()
def former_score_candidates(self, prompts, candidates, suffix=""):
    """The engine's score reading before the token tree (main at f32310f), unchanged but for
    stats and progress: a deep copy of the head's cache a batch, then the batch's whole cache
    repeated once a candidate to feed every candidate's tokens but the last."""
    tok = self.tokenizer
    C = len(candidates)
    result = np.zeros((len(prompts), C), dtype=np.float64)
    encoded = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    head = common_prefix(encoded) if len(prompts) > 1 else []
    head_cache = None
    if len(head) >= 8:
        head_ids = torch.tensor([head], device=self.device)
        head_cache = self.model(input_ids=head_ids, use_cache=True, logits_to_keep=1).past_key_values
    else:
        head = []
    for start in range(0, len(prompts), self.score_batch):
        idx = order[start:start + self.score_batch]
        batch = [prompts[i] for i in idx]
        B = len(batch)
        rest = [encoded[i][len(head):] for i in idx]
        width = max(len(r) for r in rest)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rest], device=self.device)
        rest_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], device=self.device)
        mask = torch.cat([rest_mask.new_ones((B, len(head))), rest_mask], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, len(head):]
        cache = None
        if head_cache is not None:
            cache = copy.deepcopy(head_cache)
            cache.batch_repeat_interleave(B)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        first_logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V)
        cand = [[self.candidate_ids(prompts[i], c + suffix, head=encoded[i]) for c in candidates] for i in idx]
        L = max(len(ids) for row in cand for ids in row)
        logp = torch.zeros(B, C, dtype=torch.float64)
        for b in range(B):
            for c in range(C):
                logp[b, c] = first_logp[b, cand[b][c][0]].double()
        if L > 1:
            cache = out.past_key_values
            cache.batch_repeat_interleave(C)
            ids = torch.full((B * C, L - 1), tok.pad_token_id, dtype=torch.long)
            cmask = torch.zeros((B * C, L - 1), dtype=mask.dtype)
            for b in range(B):
                for c in range(C):
                    t = cand[b][c][:-1]
                    if t:
                        ids[b * C + c, : len(t)] = torch.tensor(t)
                        cmask[b * C + c, : len(t)] = 1
            ids, cmask = ids.to(self.device), cmask.to(self.device)
            full_mask = torch.cat([mask.repeat_interleave(C, dim=0), cmask], dim=1)
            start_pos = mask.sum(-1).repeat_interleave(C).unsqueeze(1)
            cpos = start_pos + torch.arange(L - 1, device=self.device).unsqueeze(0)
            step = self.model(input_ids=ids, attention_mask=full_mask, position_ids=cpos,
                              past_key_values=cache, use_cache=True)
            step_logp = torch.log_softmax(step.logits.float(), dim=-1)  # (B*C, L-1, V)
            for b in range(B):
                for c in range(C):
                    t = cand[b][c]
                    for k in range(1, len(t)):
                        logp[b, c] += step_logp[b * C + c, k - 1, t[k]].double()
        probs = torch.softmax(logp, dim=-1).numpy()
        for row, i in enumerate(idx):
            result[i] = probs[row]
    return result


@pytest.fixture(scope="module")
def engine(tiny_model):
    return TransformersEngine(tiny_model, dtype="float32", score_batch=3)


def judge_questions(tok, n=len(PROMPTS)):
    """Judge questions of different lengths that share the judge's instructions."""
    return [render_chat(tok, judge_question(p, "An answer. " * (3 * i))) + RATING_PREFIX
            for i, p in enumerate(PROMPTS[:n])]


# Multi-token tails: "10" is "1","0" (and "1" its prefix), the others several tokens after a shared one.
MULTI = SCORES + ["123", " zebra crossing", " zebra", "1 0 1"]
# All open with "1": their probabilities, renormalised, hang on the tokens after it (a random
# model gives the later tokens of MULTI so little mass that a wrong mask there hardly shows).
DEEP = [f"1{d}" for d in range(10)] + ["1 0 1", "1 0 2"]


def test_token_tree_shares_common_heads():
    tree = token_tree([[5, 9], [1, 9], [1, 0, 9], [1, 0, 7, 9], [3]])
    # nodes: heads of length >= 1 but without the last token: (5), (1), (1,0), (1,0,7)
    assert tree.tokens == [5, 1, 0, 7]
    assert tree.depths == [0, 0, 1, 2]
    assert tree.ancestors == [[], [], [1], [1, 2]]
    assert tree.index == {(5,): 0, (1,): 1, (1, 0): 2, (1, 0, 7): 3}


@pytest.mark.parametrize("candidates,suffix", [(SCORES, RATING_SUFFIX), (MULTI, RATING_SUFFIX), (MULTI, ""),
                                               (DEEP, RATING_SUFFIX)])
def test_tree_matches_the_copies_with_a_shared_head(engine, candidates, suffix):
    qs = judge_questions(engine.tokenizer)
    encoded = [engine.tokenizer(q, add_special_tokens=False).input_ids for q in qs]
    assert len(common_prefix(encoded)) >= 8 and len({len(e) for e in encoded}) == len(qs)
    assert max(len(engine.candidate_ids(qs[0], c + suffix)) for c in candidates) >= 3
    ours = engine.score_candidates(qs, candidates, suffix=suffix)
    np.testing.assert_allclose(ours, former_score_candidates(engine, qs, candidates, suffix), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, rtol=1e-9)
    assert ours.std(axis=1).min() > 0  # not a uniform answer that any way would give


def test_tree_matches_the_copies_without_a_shared_head(engine):
    qs = [render_chat(engine.tokenizer, p) for p in PROMPTS]
    qs[0] = "Rating: [["  # a short question with no chat turn: no head longer than 8 tokens
    assert len(common_prefix([engine.tokenizer(q, add_special_tokens=False).input_ids for q in qs])) < 8
    for cands in (MULTI, DEEP):
        ours = engine.score_candidates(qs, cands, suffix=RATING_SUFFIX)
        np.testing.assert_allclose(ours, former_score_candidates(engine, qs, cands, RATING_SUFFIX), atol=1e-4, rtol=0)
    one = engine.score_candidates(qs[1:2], DEEP, suffix=RATING_SUFFIX)
    np.testing.assert_allclose(one, ours[1:2], atol=1e-4, rtol=0)


def test_a_question_alone_and_in_a_batch_score_the_same(engine):
    qs = judge_questions(engine.tokenizer)
    together = engine.score_candidates(qs, DEEP, suffix=RATING_SUFFIX)
    alone = np.vstack([engine.score_candidates([q], DEEP, suffix=RATING_SUFFIX) for q in qs])
    np.testing.assert_allclose(together, alone, atol=1e-4, rtol=0)


def test_eager_attention_reads_the_tree_mask_too(tiny_model):
    eng = TransformersEngine(tiny_model, dtype="float32", score_batch=2)
    qs = judge_questions(eng.tokenizer, 4)
    sdpa = eng.score_candidates(qs, DEEP, suffix=RATING_SUFFIX)
    eng.model.set_attn_implementation("eager")
    assert eng.model.config._attn_implementation == "eager"
    np.testing.assert_allclose(eng.score_candidates(qs, DEEP, suffix=RATING_SUFFIX), sdpa, atol=1e-4, rtol=0)
    np.testing.assert_allclose(former_score_candidates(eng, qs, DEEP, RATING_SUFFIX), sdpa, atol=1e-4, rtol=0)


def test_the_head_is_broadcast_not_copied(engine):
    ids = torch.tensor([engine.tokenizer("a shared head of a few tokens", add_special_tokens=False).input_ids])
    with torch.inference_mode():
        head = engine.model(input_ids=ids, use_cache=True).past_key_values
    assert tree_ready(head)
    wide = broadcast_cache(head, 4)
    for a, b in zip(head.layers, wide.layers):
        assert b.keys.shape[0] == 4 and b.keys.data_ptr() == a.keys.data_ptr() and b.keys.stride(0) == 0
        assert b.values.shape == b.keys.shape and b is not a
    assert wide.get_seq_length() == head.get_seq_length() == ids.shape[1]


def test_the_copies_way_kept_for_other_caches_agrees(engine):
    """``_copies_logprobs`` (what a cache a tree cannot extend gets) against the tree, on one prefill."""
    qs = judge_questions(engine.tokenizer, 3)
    tok = engine.tokenizer
    enc = [tok(q, add_special_tokens=False).input_ids for q in qs]
    width = max(map(len, enc))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cand = [[engine.candidate_ids(q, c + RATING_SUFFIX, head=e) for c in MULTI] for q, e in zip(qs, enc)]
    got = []
    for way in (engine._tree_logprobs, engine._copies_logprobs):
        with torch.inference_mode():
            cache = engine.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True).past_key_values
            got.append(way(cache, mask, cand))
    np.testing.assert_allclose(got[0].numpy(), got[1].numpy(), atol=1e-4, rtol=0)


def test_a_sliding_window_model_past_its_window(tiny_model, tmp_path):
    """A tiny random Gemma 3 (sliding-window layers of 16 tokens between full ones, as the
    embedded gemma3-270m has them of 512): questions and head past the window."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=16,
                              layer_types=["sliding_attention", "full_attention"] * 2, max_position_embeddings=2048,
                              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    eng = TransformersEngine(str(tmp_path), dtype="float32", score_batch=3)
    qs = judge_questions(tok)
    with torch.inference_mode():
        cache = eng.model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True).past_key_values
    assert tree_ready(cache) and any(layer.is_sliding for layer in cache.layers)
    for cands in (MULTI, DEEP):
        ours = eng.score_candidates(qs, cands, suffix=RATING_SUFFIX)
        np.testing.assert_allclose(ours, former_score_candidates(eng, qs, cands, RATING_SUFFIX), atol=1e-4, rtol=0)
    # questions shorter than the window: the sliding layers hold all of the prompt
    short = ["Rating: [[", "A: [[", "Score it: [["]
    np.testing.assert_allclose(eng.score_candidates(short, DEEP, suffix=RATING_SUFFIX),
                               former_score_candidates(eng, short, DEEP, RATING_SUFFIX), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_embedded_smollm2_few_shot_judge_agrees_with_the_copies():
    """The default model as the few-shot base judge (judge=base shots=3), in float32."""
    from alma_data.config import load_recipe
    from alma_data.judges import Judge, pick_shots, seed_shots
    from alma_data.models import resolve

    recipe = load_recipe("default")
    eng = TransformersEngine(resolve("smollm2-135m"), dtype="float32", score_batch=2)
    judge = Judge(ref="base", engine=eng, shots=pick_shots(seed_shots(None, recipe), 3, seed=0))
    pairs = [("What is the capital of France?", "Paris."), ("2+2?", "5, since two and two make five."),
             ("Name a fruit.", "An apple is a fruit that grows on trees in many countries."),
             ("Say hi.", "Hi!")]
    qs = [judge.question(p, r) for p, r in pairs]
    head = common_prefix([eng.tokenizer(q, add_special_tokens=False).input_ids for q in qs])
    assert len(head) > 300  # the three examples are in the shared head
    ours = eng.score_candidates(qs, SCORES, suffix=RATING_SUFFIX)
    np.testing.assert_allclose(ours, former_score_candidates(eng, qs, SCORES, RATING_SUFFIX), atol=1e-4, rtol=0)
