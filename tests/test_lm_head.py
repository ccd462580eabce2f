"""The CPU LM head of training/lm_head.py computes what the full logits give: the SFT loss, every
parameter's gradient, the entropy and top-1 TRL logs; and TRL's trainer runs through it."""

import copy

import pytest
import torch

from training import lm_head


def _batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 21), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 15:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :8] = -100  # the prompt
    labels[1, 15:] = -100
    labels[2, 5:12] = -100
    return ids, attention, labels


def _model(path: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _fused(model):
    """The model as TRL's SFTTrainer makes it, then with the CPU head in front."""
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, outputs=lm_head.OUTPUTS)
    return model


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rows", [8, None])  # several chunks of 8 rows; one chunk of all
def test_cpu_head_gives_the_full_logits_loss_and_gradients(tiny_model, monkeypatch, rows):
    plain = _model(tiny_model)
    vocab = plain.config.vocab_size
    if rows:
        monkeypatch.setattr(lm_head, "CHUNK_ELEMENTS", rows * vocab)
    ids, attention, labels = _batch(vocab)
    lean = _fused(copy.deepcopy(plain))
    assert lm_head.lean_lm_head(lean)

    out = plain(input_ids=ids, attention_mask=attention, labels=labels)
    out.loss.backward()
    logits = out.logits.detach()[:, :-1].double()
    want = _grads(plain)

    calls = []
    head = lm_head.HeadLogProbs.apply
    monkeypatch.setattr(lm_head.HeadLogProbs, "apply", lambda *a: calls.append(a[0].shape[0]) or head(*a))
    fused = lean(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
    fused.loss.backward()
    got = _grads(lean)

    valid = labels[:, 1:] != -100
    assert calls == [int(valid.sum())], "only the positions with a label go through the head"
    torch.testing.assert_close(fused.loss, out.loss, rtol=1e-6, atol=1e-7)
    assert want.keys() == got.keys() and len(want) == len(list(plain.parameters()))
    for name in want:
        # float32 noise: a chunk of a few rows sums its gradient over the 49,152-token vocabulary in
        # another order than the full batch's product does (relative 1e-5 at a few rows, 1e-7 at 170)
        error = (got[name] - want[name]).abs().max()
        assert error <= 3e-5 * want[name].abs().max(), (name, float(error))
    # the per-token fields TRL's SFT logs, from the full logits
    logp = torch.log_softmax(logits, -1)
    target = labels[:, 1:].clamp(min=0)
    torch.testing.assert_close(fused.log_probs.double(), logp.gather(-1, target[..., None])[..., 0] * valid,
                               rtol=1e-5, atol=1e-5)
    entropy = -(logp.exp() * logp).sum(-1) * valid
    torch.testing.assert_close(fused.entropy.double(), entropy, rtol=1e-5, atol=1e-5)
    assert torch.equal(fused.is_top1, (logits.argmax(-1) == target) & valid)
    assert torch.equal(fused.label_mask, valid)


def test_cpu_head_matches_trls_own_forward_under_bf16_autocast(tiny_model):
    """Under autocast (train.bf16 where the CPU has it) the products run in bf16, as TRL's do."""
    trl_model = _fused(_model(tiny_model))
    lean = _fused(copy.deepcopy(trl_model))
    assert lm_head.lean_lm_head(lean)
    ids, attention, labels = _batch(trl_model.config.vocab_size)
    results = []
    for model in (trl_model, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
        out.loss.backward()
        results.append((out.loss.detach(), _grads(model)))
    (loss_trl, g_trl), (loss_lean, g_lean) = results
    torch.testing.assert_close(loss_lean, loss_trl, rtol=2e-3, atol=1e-3)
    for name in g_trl:
        scale = g_trl[name].abs().max()
        assert (g_lean[name] - g_trl[name]).abs().max() <= 2e-2 * scale + 1e-6, name


def test_sft_trains_through_the_cpu_head_with_trls_loss(tiny_model, tmp_path, monkeypatch):
    """train_sft (what the SFT and judge stages run) goes through the CPU head and trims the heap
    between layers, and its training loss is the one TRL's own forward gives without trimming."""
    import datasets

    from alma_data import memory
    from training import TrainSpec, heap, train_sft

    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?",
             "completion": f"It is {2 * i}, since {i} + {i} = {2 * i}."} for i in range(8)]
    spec = TrainSpec(batch_size=4, max_length=64, max_steps=2, learning_rate=1e-3, seed=0)
    calls, trims = [], []
    head, trim = lm_head.HeadLogProbs.apply, memory.trim_heap
    monkeypatch.setattr(lm_head.HeadLogProbs, "apply", lambda *a: calls.append(a[0].shape[0]) or head(*a))
    monkeypatch.setattr(memory, "trim_heap", lambda: trims.append(1) or trim())
    lean = train_sft(tiny_model, datasets.Dataset.from_list(rows), tmp_path / "lean", spec, log=lambda m: None)
    assert len(calls) == 2 and all(n > 0 for n in calls)
    layers = 2  # the tiny model's: a trim after each one's forward and each one's backward, each step
    assert len(trims) == 1 + 2 * layers * 2, "one check that glibc is there, then two a layer a step"
    monkeypatch.setattr(lm_head, "ENABLED", False)
    monkeypatch.setattr(heap, "ENABLED", False)
    plain = train_sft(tiny_model, datasets.Dataset.from_list(rows), tmp_path / "plain", spec, log=lambda m: None)
    assert len(calls) == 2 and len(trims) == 9, "with both off, TRL's forward runs untrimmed"
    assert lean["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-5)
