"""Engines: text generation and score reading behind one interface."""

from __future__ import annotations

from alma_data.engines.base import Engine, EngineStats, Sample, SamplingParams, expected_score

__all__ = ["Engine", "EngineStats", "Sample", "SamplingParams", "expected_score", "load_engine"]


def load_engine(kind: str, model_path: str, *, dtype: str = "auto", batch_rows: int = 32,
                score_batch: int = 8) -> Engine:
    """Build the engine a recipe names; heavy backends are imported only when asked for."""
    if kind == "transformers":
        from alma_data.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model_path, dtype=dtype, batch_rows=batch_rows, score_batch=score_batch)
    if kind in ("vllm", "openai"):
        raise NotImplementedError(
            f"engine={kind} is not available in this version of alma-data; use engine=transformers"
        )
    raise ValueError(f"unknown engine {kind!r}; one of transformers, vllm, openai")
