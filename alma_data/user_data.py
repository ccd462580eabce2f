"""Reading the files users bring to ``alma-data judge`` and ``alma-data eval``.

A source is a .jsonl / .json / .parquet file, a local dataset folder (files the datasets
library reads, or a ``save_to_disk`` folder), or a Hub dataset id. Rows come in the public
shapes people already have:

- to score: ``{prompt, response}``, or a conversation ``{messages: [{role, content}, ...]}``
  whose last turn is the assistant's (``conversations`` / ``conversation`` too);
- preference pairs: ``{prompt, chosen, rejected}`` (TRL, RewardBench, the binarised sets;
  chosen / rejected as text or as lists of ``{role, content}``, with or without the prompt's
  turns in them), and ``{input, output_1, output_2, label}`` (label 1 or 2);
- prompts to answer: ``{prompt}``, ``{question_id, category, turns: [...]}`` (first turn),
  ``{instruction, input?}``.

A row that does not fit stops the read with the file, the row and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from alma_data.errors import AlmaError
from alma_data.ids import prompt_id
from alma_data.seeds import json_object


class InputError(AlmaError, ValueError):
    """A user's file that cannot be read as asked; names the file, the row and the fix."""


PAIR_FORMATS = "{prompt, chosen, rejected} or {input, output_1, output_2, label}"
SCORE_FORMATS = "{prompt, response}, {messages: [{role, content}, ...]}, " + PAIR_FORMATS
PROMPT_FORMATS = "{prompt}, {question_id, category, turns: [...]} or {instruction}"
CONVERSATION_KEYS = ("messages", "conversations", "conversation")


@dataclass(frozen=True)
class Scored:
    """One (prompt, response) to score."""
    prompt: str
    response: str


@dataclass(frozen=True)
class Pair:
    """A preference pair: the judge should score ``chosen`` above ``rejected``."""
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class EvalPrompt:
    prompt_id: str
    prompt: str
    category: str


# -- rows ---------------------------------------------------------------------------------

def iter_rows(source: str, split: str = "test", subset: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every row; ``where`` is 'file:line' or 'source[split] row i'.
    ``subset`` is a Hub dataset's configuration name, where it has several."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix in (".jsonl", ".json"):
            yield from _iter_json(path)
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            for i, row in enumerate(pq.read_table(path).to_pylist()):
                yield f"{path} row {i}", row
        else:
            raise InputError(f"{path}: read .jsonl, .json or .parquet files, a dataset folder or a Hub dataset id; "
                             "convert the file to one of them")
        return
    import datasets

    try:
        if path.is_dir() and (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
            ds = datasets.load_from_disk(str(path))  # a save_to_disk folder
            if isinstance(ds, datasets.DatasetDict):
                ds = _pick_split(ds, split, source)
        else:
            # A local folder of data files, or a Hub dataset id: the datasets library reads both.
            # The split asked for alone; a folder of plain files has only "train", which is
            # taken when it is the one split there is.
            name = str(path) if path.is_dir() else source
            try:
                ds = datasets.load_dataset(name, subset, split=split)
            except ValueError as exc:
                if "split" not in str(exc).lower():
                    raise
                ds = _pick_split(datasets.load_dataset(name, subset), split, source)
    except InputError:
        raise
    except Exception as exc:  # the library raises many kinds; its message is what matters
        what = "folder" if path.is_dir() else "file or Hub dataset"
        raise InputError(f"could not read {source!r} as a dataset {what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
                         "Give a .jsonl/.json/.parquet file, a local dataset folder, or a Hub dataset id you can reach") from None
    for i, row in enumerate(ds):
        yield f"{source}[{split}] row {i}", row


def _pick_split(ds, split: str, source: str):
    if not hasattr(ds, "keys"):
        return ds
    names = list(ds.keys())
    if split in names:
        return ds[split]
    if len(names) == 1:
        return ds[names[0]]
    raise InputError(f"{source} has splits {names} and no {split!r}; choose one with split=NAME")


def _iter_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # one JSON array (an AlpacaEval-style .json)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InputError(f"{path} item {i}: each item must be a JSON object, got {type(row).__name__}")
            yield f"{path} item {i}", row
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        yield where, json_object(line, where, InputError)


def read_rows(source: str, split: str = "test", limit: int = 0, subset: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for item in iter_rows(source, split, subset):
        rows.append(item)
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise InputError(f"{source}: no rows; the file is empty")
    return rows


# -- text and conversations ---------------------------------------------------------------

def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: column {key!r} must be text or a list of {{role, content}} messages, "
                         f"got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{where}: column {key!r} is empty; fill it or remove the row")
    return value.strip()


def _messages(value: list, where: str, key: str) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(value):
        if isinstance(m, dict) and "from" in m and "value" in m and "role" not in m:
            m = {"role": {"human": "user", "gpt": "assistant"}.get(str(m["from"]).lower(), str(m["from"]).lower()),
                 "content": m["value"]}
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"{where}: {key}[{i}] must be a {{role, content}} message, got {str(m)[:80]!r}")
        out.append({"role": str(m["role"]).lower(), "content": _text(m["content"], where, f"{key}[{i}].content")})
    if not out:
        raise InputError(f"{where}: column {key!r} is an empty list of messages")
    return out


def render_turns(turns: list[dict[str, str]]) -> str:
    """A conversation as the one prompt text the judge question holds: a single user turn
    as it is, several turns labelled by speaker, so the judge sees the whole context."""
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n\n".join(f"{t['role'].capitalize()}: {t['content']}" for t in turns)


def _prompt_text(row: dict, key: str, where: str) -> str:
    value = row[key]
    return render_turns(_messages(value, where, key)) if isinstance(value, list) else _text(value, where, key)


def _answer(value: Any, where: str, key: str) -> tuple[str | None, str]:
    """(context, answer) of a response column: text, or messages whose last turn is the
    assistant's (the turns before it, when there are any, are the context)."""
    if not isinstance(value, list):
        return None, _text(value, where, key)
    turns = _messages(value, where, key)
    if turns[-1]["role"] != "assistant":
        raise InputError(f"{where}: the last message of {key!r} is a {turns[-1]['role']!r} turn; it must be the "
                         "assistant's answer")
    context = turns[:-1]
    return (render_turns(context) if any(t["role"] != "assistant" for t in context) else None), turns[-1]["content"]


def _missing(row: dict, where: str, key: str, formats: str) -> InputError:
    return InputError(f"{where}: missing column {key!r} (columns: {sorted(row)}); rows must be {formats}")


# -- what to score ------------------------------------------------------------------------

def detect_kind(row: dict, where: str) -> str:
    """``pairs``, ``labelled`` or ``single``, from the first row's columns."""
    if "chosen" in row or "rejected" in row:
        return "pairs"
    if "output_1" in row or "output_2" in row:
        return "labelled"
    if "response" in row or any(k in row for k in CONVERSATION_KEYS):
        return "single"
    if "prompt" in row:
        raise _missing(row, where, "response", SCORE_FORMATS)
    raise InputError(f"{where}: no known format fits the columns {sorted(row)}; rows must be {SCORE_FORMATS}")


def to_pair(row: dict, where: str, kind: str) -> Pair:
    if kind == "labelled":
        for key in ("output_1", "output_2", "label"):
            if key not in row:
                raise _missing(row, where, key, "{input, output_1, output_2, label}")
        key = next((k for k in ("input", "instruction", "prompt") if k in row), None)
        if key is None:
            raise _missing(row, where, "input", "{input, output_1, output_2, label}")
        prompt = _prompt_text(row, key, where)
        label = str(row["label"]).strip().removeprefix("output_")
        if label not in ("1", "2"):
            raise InputError(f"{where}: label must be 1 or 2 (which output is better), got {row['label']!r}")
        first, second = _answer(row["output_1"], where, "output_1")[1], _answer(row["output_2"], where, "output_2")[1]
        return Pair(prompt, *((first, second) if label == "1" else (second, first)))
    for key in ("chosen", "rejected"):
        if key not in row:
            raise _missing(row, where, key, PAIR_FORMATS)
    context, chosen = _answer(row["chosen"], where, "chosen")
    _, rejected = _answer(row["rejected"], where, "rejected")
    if "prompt" in row and row["prompt"] is not None:
        prompt = _prompt_text(row, "prompt", where)
        # Binarised sets repeat the prompt as the first turn of chosen: the turns of chosen
        # then hold the context, which is the prompt itself or more (earlier turns).
        if context is not None and len(context) > len(prompt):
            prompt = context
    elif context is not None:
        prompt = context
    else:
        raise _missing(row, where, "prompt", PAIR_FORMATS + " (or chosen as messages with the user's turns)")
    return Pair(prompt, chosen, rejected)


def to_scored(row: dict, where: str) -> Scored:
    conv = next((k for k in CONVERSATION_KEYS if k in row and "response" not in row), None)
    if conv is not None:
        context, answer = _answer(row[conv], where, conv)
        if context is None:
            raise InputError(f"{where}: {conv!r} has no user turn before the assistant's answer")
        return Scored(context, answer)
    for key in ("prompt", "response"):
        if key not in row:
            raise _missing(row, where, key, SCORE_FORMATS)
    return Scored(_prompt_text(row, "prompt", where), _answer(row["response"], where, "response")[1])


def read_judge_input(source: str, split: str = "test", limit: int = 0, subset: str | None = None) -> tuple[str, list]:
    """(kind, items): ``pairs`` with :class:`Pair` items or ``single`` with :class:`Scored`."""
    rows = read_rows(source, split, limit, subset)
    kind = detect_kind(rows[0][1], rows[0][0])
    if kind == "single":
        return "single", [to_scored(row, where) for where, row in rows]
    return "pairs", [to_pair(row, where, kind) for where, row in rows]


# -- prompts to answer --------------------------------------------------------------------

def to_eval_prompt(row: dict, where: str) -> EvalPrompt:
    if "turns" in row:
        turns = row["turns"]
        if not isinstance(turns, list) or not turns:
            raise InputError(f"{where}: 'turns' must be a non-empty list of the user's turns")
        first = turns[0]
        if isinstance(first, dict) and "content" in first:
            first = first["content"]
        prompt = _text(first, where, "turns[0]")
    elif "prompt" in row:
        prompt = _prompt_text(row, "prompt", where)
    elif "instruction" in row:
        prompt = _text(row["instruction"], where, "instruction")
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip():
            prompt = f"{prompt}\n\n{extra.strip()}"
    else:
        raise _missing(row, where, "prompt", PROMPT_FORMATS)
    pid = row.get("question_id", row.get("prompt_id", row.get("id")))
    category = row.get("category") or row.get("dataset") or "general"
    return EvalPrompt(str(pid) if pid is not None else prompt_id(prompt), prompt, str(category))


def read_eval_prompts(source: str, split: str = "test", limit: int = 0, subset: str | None = None) -> list[EvalPrompt]:
    prompts = [to_eval_prompt(row, where) for where, row in read_rows(source, split, limit, subset)]
    seen: set[str] = set()
    for p in prompts:
        if p.prompt_id in seen:
            raise InputError(f"{source}: prompt id {p.prompt_id!r} appears twice; ids must be unique")
        seen.add(p.prompt_id)
    return prompts
