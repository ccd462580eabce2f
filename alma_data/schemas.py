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
])
