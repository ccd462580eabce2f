"""Self-distillation on the teacher's full distribution (judge.distill_target=soft), on the
real tiny model with SmolLM2's tokenizer, which splits "10" into "1","0"."""

import json

import numpy as np
import pytest
import torch

from alma_data.prompting import RATING_PREFIX, RATING_SUFFIX, judge_question, render_chat
from tests.conftest import run_cli
from training.distill import add_soft_columns, candidate_log_probs, soft_kl


def _question(tok, prompt="Name a prime number.", response="Seven."):
    return render_chat(tok, judge_question(prompt, response, 10))


def test_student_distribution_is_read_as_the_judge_reads_scores(tiny_model):
    """The loss's student distribution is the one real_valued_score reads: the same
    probabilities, "10" included as two tokens, to float precision."""
    import datasets

    from alma_data.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(tiny_model, dtype="float32")
    tok = engine.tokenizer
    assert len(tok("10" + RATING_SUFFIX, add_special_tokens=False).input_ids) == 3  # "1", "0", "]]"
    q = _question(tok)
    want = engine.score_candidates([q + RATING_PREFIX], [str(s) for s in range(11)], suffix=RATING_SUFFIX)[0]
    row = add_soft_columns(datasets.Dataset.from_list([{"prompt": q, "completion": "x", "target_probs": [1 / 11] * 11}]),
                           tok, 10)[0]
    assert [len(c) for c in row["soft_candidates"]][10] == 3
    with torch.no_grad():
        got = candidate_log_probs(engine.model, row["soft_prefix"], row["soft_candidates"], "cpu").exp().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_soft_training_moves_the_judge_to_the_teacher(tiny_model, tmp_path):
    """A few steps of the soft loss on a teacher that puts its mass on 9 and 10 bring the
    student's distribution (and its real-valued score) to it; hard rows train beside them."""
    import datasets

    from alma_data.engines.transformers_engine import TransformersEngine
    from training import TrainSpec
    from training.distill import train_soft_sft

    teacher = [0.0] * 9 + [0.4, 0.6]
    rows = [{"prompt": judge_question("Name a prime number.", "Seven.", 10), "completion": "Rating: [[9]]",
             "target_probs": teacher},
            {"prompt": judge_question("Say hi.", "Hello!", 10), "completion": "Rating: [[8]]", "target_probs": []}]
    ds = datasets.Dataset.from_list(rows * 4, features=datasets.Features({
        "prompt": datasets.Value("string"), "completion": datasets.Value("string"),
        "target_probs": datasets.Sequence(datasets.Value("float32"))}))
    before = TransformersEngine(tiny_model, dtype="float32")
    q = _question(before.tokenizer) + RATING_PREFIX
    cands = [str(s) for s in range(11)]
    p0 = before.score_candidates([q], cands, suffix=RATING_SUFFIX)[0]
    out = tmp_path / "judge"
    out.mkdir()
    summary = train_soft_sft(tiny_model, ds, out, TrainSpec(learning_rate=1e-2, batch_size=4, max_steps=20, max_length=256,
                                                            warmup_ratio=0.0),
                             log=lambda m: None, render_prompt=render_chat)
    assert summary["trainer"] == "sft-soft" and np.isfinite(summary["train_loss"])
    after = TransformersEngine(str(out), dtype="float32")
    p1 = after.score_candidates([q], cands, suffix=RATING_SUFFIX)[0]
    kl = lambda p: float(sum(t * np.log(t / max(x, 1e-12)) for t, x in zip(teacher, p) if t > 0))  # noqa: E731
    print(f"KL {kl(p0):.3f} -> {kl(p1):.3f}; score {(p0 * np.arange(11)).sum():.2f} -> {(p1 * np.arange(11)).sum():.2f}")
    assert kl(p1) < kl(p0) / 2
    assert (p1 * np.arange(11)).sum() > (p0 * np.arange(11)).sum() + 0.25  # 4.46 -> 4.83 here


def test_soft_kl_is_zero_for_the_students_own_distribution(tiny_model):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    q = _question(tok)
    row = add_soft_columns(datasets.Dataset.from_list([{"prompt": q, "completion": "x", "target_probs": [1 / 11] * 11}]),
                           tok, 10)[0]
    with torch.no_grad():
        own = candidate_log_probs(model, row["soft_prefix"], row["soft_candidates"], "cpu").exp().tolist()
        assert float(soft_kl(model, {**row, "target_probs": own}, "cpu")) == pytest.approx(0.0, abs=1e-5)
        assert float(soft_kl(model, row, "cpu")) > 0


def test_tiny_build_with_soft_distillation(tmp_path):
    """judge.distill_target=soft through a real round-2 build: the distilled judge is trained
    by the soft trainer on the seed annotations (hard) and judge_distill (soft), and judged."""
    runs = tmp_path / "runs"
    run_cli("build", "round=2", "recipe=tiny", f"runs_dir={runs}", "run=soft", "judge.distill_target=soft")
    manifest = json.loads((runs / "soft" / "round=2" / "checkpoints" / "judge" / "_manifest.json").read_text())
    assert manifest["training"]["trainer"] == "sft-soft"
    quality = run_cli("query", f"runs_dir={runs}", "run=soft", "--format", "json",
                      "select round, metric, value from judge_quality where metric = 'pairwise_accuracy_real' "
                      "and rung <> 'base few-shot' order by round")
    assert [r["round"] for r in json.loads(quality.stdout)] == [1, 2]
