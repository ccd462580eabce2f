"""The outside sets a build measures itself on (``judge.eval_sets``, ``eval.prompt_sets``):
their names in the tables, what their configuration hash holds, and reading them with the
recipe key that named them in every error.

A set is a file, a dataset folder or a Hub dataset id, read by :mod:`alma_data.user_data`
as ``alma-data judge`` and ``alma-data eval`` read them. A local set's hash is the hash of
its bytes, so an edited file is measured again; a Hub set's is its id and split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from alma_data.user_data import EvalPrompt, InputError, Pair, read_eval_prompts, read_judge_input


def set_name(source: str) -> str:
    """What the tables call a set: a file's name without its suffix, a folder's name, a Hub id."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.stem
    if path.is_dir():
        return path.name
    return source


def set_names(sources: list[str], key: str) -> list[str]:
    names = [set_name(s) for s in sources]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise InputError(f"{key}: two sets are called {n!r} ({sources[names.index(n)]}, {sources[i]}); "
                             "rename one of the files")
    return names


def set_fingerprint(source: str, split: str, limit: int) -> str:
    """sha256 of a local set's bytes (every file of a folder, in order), else its id; with the
    split and the row limit."""
    path = Path(source).expanduser()
    h = hashlib.sha256(f"{split}\0{limit}\0".encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    if not files:
        h.update(source.encode())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def sets_hash(sources: list[str], split: str, limit: int) -> list[list[str]]:
    """What a stage over these sets puts in its configuration hash."""
    return [[set_name(s), set_fingerprint(s, split, limit)] for s in sources]


def read_pair_set(source: str, split: str, limit: int) -> list[Pair]:
    """A preference set named in ``judge.eval_sets``."""
    try:
        kind, items = read_judge_input(source, split, limit)
    except InputError as exc:
        raise InputError(f"judge.eval_sets: {exc}") from None
    if kind != "pairs":
        raise InputError(f"judge.eval_sets: {source} holds responses to score, not preference pairs; give rows "
                         "{prompt, chosen, rejected} or {input, output_1, output_2, label}, or score it with "
                         "alma-data judge")
    return items


def read_prompt_set(source: str, split: str, limit: int) -> list[EvalPrompt]:
    """A prompt set named in ``eval.prompt_sets``."""
    try:
        return read_eval_prompts(source, split, limit)
    except InputError as exc:
        raise InputError(f"eval.prompt_sets: {exc}") from None
