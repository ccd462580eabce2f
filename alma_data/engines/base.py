"""One interface for text generation and score reading; backends live beside it."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from alma_data.errors import EngineError  # noqa: F401  (the engines raise it from here)


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class Sample:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length"


@dataclass
class EngineStats:
    generated_tokens: int = 0
    generated_sequences: int = 0
    generate_seconds: float = 0.0
    scored: int = 0
    score_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0

    @property
    def scored_per_second(self) -> float:
        return self.scored / self.score_seconds if self.score_seconds else 0.0


class Engine(abc.ABC):
    """A loaded model that samples text and reads next-token probabilities."""

    name: str
    tokenizer: object

    def __init__(self) -> None:
        self.stats = EngineStats()

    @abc.abstractmethod
    def generate(self, prompts: list[str], params: SamplingParams, progress=None) -> list[list[Sample]]:
        """``params.n`` samples for each (already rendered) prompt; the same seed gives the same samples."""

    @abc.abstractmethod
    def score_candidates(self, prompts: list[str], candidates: list[str], suffix: str = "",
                         progress=None) -> np.ndarray:
        """Probabilities of each candidate continuing each prompt, renormalised over the candidates.

        A candidate may span several tokens; ``suffix`` is appended to every candidate
        so that one that is a prefix of another ("1" of "10") is told apart from it.
        Returns an array of shape (len(prompts), len(candidates)).
        """

    def candidate_ids(self, prompt: str, candidate: str, head: list[int] | None = None) -> list[int]:
        """Tokens of ``candidate`` as they follow ``prompt`` (tokenised in context);
        ``head`` is the prompt's own tokens where the caller has them already."""
        tok = self.tokenizer
        if head is None:
            head = tok(prompt, add_special_tokens=False).input_ids
        full = tok(prompt + candidate, add_special_tokens=False).input_ids
        if full[: len(head)] == head and len(full) > len(head):
            return full[len(head):]
        return tok(candidate, add_special_tokens=False).input_ids

    def close(self) -> None:
        """Free the model's memory."""


def cut_at_stop(text: str, stops: list[str], reason: str) -> tuple[str, str]:
    """``text`` up to its first stop string (the reason then ``stop``), else as it was."""
    for s in stops:
        cut = text.find(s)
        if cut >= 0:
            text, reason = text[:cut], "stop"
    return text, reason


def expected_score(probs: np.ndarray) -> np.ndarray:
    """Real-valued score: the expectation of 0..S under the renormalised probabilities."""
    levels = np.arange(probs.shape[-1], dtype=np.float64)
    return (probs * levels).sum(axis=-1)
