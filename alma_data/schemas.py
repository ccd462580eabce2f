"""Column contracts of the store's tables (later stages and users rely on them)."""

import pyarrow as pa

SCORE_PROBS = pa.list_(pa.float32())

PROMPTS = pa.schema([
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("source", pa.string()),          # seed | synthetic
    ("category", pa.string()),
    ("split", pa.string()),           # train | eval (held out to track progress)
])

SFT = pa.schema([
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("response", pa.string()),
    ("score", pa.float64()),          # null for seed pairs
    ("source", pa.string()),
])

JUDGE_SEED = pa.schema([
    ("annotation_id", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("response", pa.string()),
    ("score", pa.int32()),
    ("heldout", pa.bool_()),
])

RESPONSES = pa.schema([
    ("response_id", pa.string()),
    ("prompt_id", pa.string()),
    ("checkpoint", pa.string()),
    ("sample_index", pa.int32()),
    ("seed", pa.int64()),
    ("response", pa.string()),
    ("n_tokens", pa.int32()),
    ("finish_reason", pa.string()),   # stop | length
])

JUDGMENTS = pa.schema([
    ("response_id", pa.string()),
    ("score", pa.float64()),          # real-valued: expectation under the renormalised probs
    ("score_int", pa.int32()),        # argmax
    ("probs", SCORE_PROBS),
    ("judge", pa.string()),
])

# The judge scored on held-out annotations, beside the human score.
JUDGE_EVAL = pa.schema([
    ("annotation_id", pa.string()),
    ("prompt_id", pa.string()),
    ("human_score", pa.int32()),
    ("score", pa.float64()),
    ("score_int", pa.int32()),
    ("probs", SCORE_PROBS),
    ("judge", pa.string()),
])

JUDGE_QUALITY = pa.schema([
    ("judge", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float64()),
    ("n", pa.int64()),
    ("eval_set", pa.string()),  # heldout (the seed annotations held out), or a judge.eval_sets set
    ("rung", pa.string()),      # the paper's ladder: base few-shot, fine-tuned, self-distilled
    ("low", pa.float64()),      # 95% bootstrap interval (over prompts on heldout, over pairs on a set)
    ("high", pa.float64()),
])

JUDGE_SETS = pa.schema([
    ("eval_set", pa.string()), ("row", pa.int64()), ("rung", pa.string()), ("judge", pa.string()),
    ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
    ("n_tokens_chosen", pa.int32()), ("n_tokens_rejected", pa.int32()), ("too_long", pa.bool_()),
    ("score_chosen", pa.float64()), ("score_rejected", pa.float64()),
    ("score_int_chosen", pa.int32()), ("score_int_rejected", pa.int32()),
    ("probs_chosen", SCORE_PROBS), ("probs_rejected", SCORE_PROBS),
])
