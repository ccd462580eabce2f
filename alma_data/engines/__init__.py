"""Engines: text generation and score reading behind one interface.

``transformers`` runs here (CPU or one GPU), ``vllm`` on local GPUs (the ``gpu`` extra),
``openai`` against any server speaking the OpenAI completions API. The stages never
name a backend: they ask :func:`open_engine` for the one the recipe picks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alma_data.engines.base import Engine, EngineError, EngineStats, Sample, SamplingParams, expected_score

if TYPE_CHECKING:
    from alma_data.config import Recipe

__all__ = ["Engine", "EngineError", "EngineStats", "Sample", "SamplingParams", "expected_score", "load_engine", "open_engine"]

ENGINES = ("transformers", "vllm", "openai")


def load_engine(kind: str, model_path: str, *, dtype: str = "auto", batch_rows: int = 0,
                score_batch: int = 8, memory_budget_gb: float = 2.0, name: str = "base", round: int | None = None,
                options: object | None = None, cache_dir: str | Path | None = None) -> Engine:
    """Build one engine; heavy backends are imported only when asked for.

    ``name``/``round`` say which checkpoint ``model_path`` is (``base``, ``m1a``, ``judge``):
    a server-backed engine maps them to a served model. ``options`` is the recipe's
    section for the backend (``recipe.vllm``, ``recipe.openai``).
    """
    from alma_data.models import EMBEDDED, resolve
    from alma_data.store import local_model_path

    # On the machine that opens the engine (a Ray worker on another node, say): an embedded
    # model is unpacked there, and a remote run's checkpoint is copied there once.
    model_path = local_model_path(resolve(model_path) if model_path in EMBEDDED else str(model_path))
    if kind == "transformers":
        from alma_data.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model_path, dtype=dtype, batch_rows=batch_rows, score_batch=score_batch,
                                  memory_budget_gb=memory_budget_gb)
    if kind == "vllm":
        from alma_data.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, options=options)
    if kind == "openai":
        from alma_data.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(model_path, name=name, round=round, options=options, cache_dir=cache_dir)
    raise ValueError(f"unknown engine {kind!r}; one of {', '.join(ENGINES)}")


def open_engine(recipe: "Recipe", model_path: str, *, name: str = "base", round: int | None = None,
                cache_dir: str | Path | None = None, role: str = "sample") -> Engine:
    """The engine a recipe names, for one checkpoint; ``role`` is ``sample`` or ``score``."""
    options = {"vllm": recipe.vllm, "openai": recipe.openai}.get(recipe.engine)
    dtype = recipe.judge.dtype if role == "score" and recipe.judge.dtype != "auto" else recipe.dtype
    return load_engine(recipe.engine, model_path, dtype=dtype, batch_rows=recipe.responses.batch_size,
                       score_batch=recipe.judge.batch_size_score, memory_budget_gb=recipe.responses.kv_cache_gb,
                       name=name, round=round, options=options,
                       cache_dir=cache_dir)
