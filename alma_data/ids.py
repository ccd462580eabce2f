"""Deterministic ids: a hash of content and lineage, so SQL can join across rounds."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def stable_id(*parts: object) -> str:
    h = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8"))
    return h.hexdigest()[:16]


def normalize_text(text: str) -> str:
    """Case, white space and punctuation folded: the key of exact dedup (same as sql/normalize)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _PUNCT.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def prompt_id(prompt: str) -> str:
    return stable_id("prompt", normalize_text(prompt))


def response_id(prompt_id_: str, checkpoint: str, sample_index: int, round: int) -> str:
    return stable_id("response", prompt_id_, checkpoint, sample_index, round)


def seed_int(*parts: object) -> int:
    """A 31-bit seed derived from parts (for per-shard random generators)."""
    return int(stable_id("seed", *parts)[:8], 16) & 0x7FFFFFFF
