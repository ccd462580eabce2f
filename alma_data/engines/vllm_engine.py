"""engine=vllm: offline vLLM on local GPUs (the ``gpu`` extra)."""

from __future__ import annotations

from alma_data.engines.base import Engine


def _require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "engine=vllm needs vLLM and a GPU: pip install 'alma-data[gpu]' on a CUDA machine, "
            "or use engine=transformers (CPU) or engine=openai (a running server)"
        ) from exc
    return vllm


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model_path: str, dtype: str = "auto", options=None):
        super().__init__()
        _require_vllm()
        raise NotImplementedError("engine=vllm is being written")

    def generate(self, prompts, params, progress=None):
        raise NotImplementedError

    def score_candidates(self, prompts, candidates, suffix="", progress=None):
        raise NotImplementedError
