"""Seed loaders: JSONL, Parquet, local folders and Hub datasets, with schema checks.

Two kinds of seed, as in the paper: SFT pairs (prompt, response) and judge annotations
(prompt, response, score 0..scale). Adapters read the public shapes users bring:
Daring-Anteater-style conversations for SFT and HelpSteer2-style attribute ratings
for the judge. A malformed row stops the load with the file, the row and the fix;
nothing is written before every row has passed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from alma_data.errors import AlmaError
from alma_data.resources import resource_dir

MAX_PROMPT_CHARS = 16_000
MAX_RESPONSE_CHARS = 32_000


class SeedError(AlmaError, ValueError):
    """A seed source that cannot be used; names the file, the row and the fix."""


@dataclass(frozen=True)
class SftSeed:
    prompt: str
    response: str
    category: str


@dataclass(frozen=True)
class JudgeSeed:
    prompt: str
    response: str
    score: int
    group: str


def bundled_path(name: str) -> Path:
    path = resource_dir("seed") / f"{name}.jsonl"
    if not path.is_file():
        raise SeedError(f"no bundled seed set {name!r}; bundled: "
                        f"{sorted(p.stem for p in resource_dir('seed').glob('*.jsonl'))}")
    return path


def iter_rows(source: str, split: str = "train") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, row) for every row of a source; ``where`` is 'file:line' or 'source[row]'."""
    if source.startswith("bundled:"):
        source = str(bundled_path(source.split(":", 1)[1]))
    path = Path(source)
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        _check_not_compressed(path)
        yield from _iter_jsonl(path)
    elif path.is_file() and path.suffix == ".parquet":
        yield from _iter_parquet(path)
    elif path.exists() and not path.is_dir():
        raise SeedError(f"{path}: seed files are .jsonl or .parquet; convert it or point to a folder/Hub dataset")
    else:
        # A local dataset folder or a Hub id: the datasets library reads both.
        import datasets

        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as exc:  # the library raises many kinds; the message is what matters
            raise SeedError(
                f"could not load seed dataset {source!r} (split {split!r}): {exc}. "
                "Give a .jsonl/.parquet path, a local dataset folder, or a Hub dataset id you can reach."
            ) from exc
        for i, row in enumerate(ds):
            yield f"{source}[{split}] row {i}", row


_COMPRESSED = {b"\x1f\x8b": ("gzip", "gunzip"), b"BZh": ("bzip2", "bunzip2"), b"\xfd7zXZ": ("xz", "unxz"),
               b"\x28\xb5\x2f\xfd": ("zstd", "unzstd"), b"PK\x03\x04": ("zip", "unzip")}


def _check_not_compressed(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, (kind, tool) in _COMPRESSED.items():
        if head.startswith(magic):
            raise SeedError(f"{path}: this is a {kind}-compressed file, not JSON Lines text; decompress it first "
                            f"({tool} < {path.name} > plain.jsonl) and point the recipe at the plain file")
    if head.startswith(b"PAR1"):
        raise SeedError(f"{path}: this is a Parquet file named {path.suffix}; rename it to .parquet")


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        with open(path, "rb") as f:
            head = f.read(4)
        hint = ("it looks like text: if it is JSON Lines, name it .jsonl" if head[:1] in (b"{", b"[")
                or head.isascii() else "it may be damaged or cut short; write it again")
        raise SeedError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]}); {hint}") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} row {i}", row


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SeedError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                                "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix the line") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            yield where, json_object(line, where, SeedError)


def json_object(line: str, where: str, error: type[Exception]) -> dict[str, Any]:
    """One JSON Lines row, or ``error`` naming ``where`` (file:line) and the fix."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove the line") from None
    if not isinstance(row, dict):
        raise error(f"{where}: each line must be a JSON object, got {type(row).__name__}")
    return row


def _text(row: dict[str, Any], key: str, where: str, limit: int) -> str:
    if key not in row:
        raise SeedError(f"{where}: missing column {key!r} (columns: {sorted(row)}); add it, or choose the adapter that matches this data")
    value = row[key]
    if not isinstance(value, str):
        raise SeedError(f"{where}: column {key!r} must be text, got {type(value).__name__}")
    if not value.strip():
        raise SeedError(f"{where}: column {key!r} is empty; fill it or remove the row")
    if len(value) > limit:
        raise SeedError(f"{where}: column {key!r} has {len(value):,} characters, over the limit of {limit:,}; shorten or remove the row")
    return value.strip()


# -- SFT seeds ----------------------------------------------------------------------------

def load_sft(source: str, fmt: str = "alma", split: str = "train") -> list[SftSeed]:
    adapters = {"alma": _sft_alma, "daring_anteater": _sft_daring_anteater}
    if fmt not in adapters:
        raise SeedError(f"unknown SFT seed format {fmt!r}; one of {sorted(adapters)}")
    seeds = [seed for where, row in iter_rows(source, split) for seed in adapters[fmt](row, where)]
    if not seeds:
        raise SeedError(f"{source}: no SFT seed rows found; the file is empty")
    return seeds


def _sft_alma(row: dict[str, Any], where: str) -> list[SftSeed]:
    category = row.get("category") or "general"
    return [SftSeed(_text(row, "prompt", where, MAX_PROMPT_CHARS),
                    _text(row, "response", where, MAX_RESPONSE_CHARS), str(category))]


def _sft_daring_anteater(row: dict[str, Any], where: str) -> list[SftSeed]:
    """Conversations as ``[{"from": "User"|"Assistant", "value": ...}, ...]``.

    Each assistant turn that answers a user turn becomes one pair, with the earlier
    turns folded into the prompt so the pair stands alone.
    """
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise SeedError(f"{where}: a Daring-Anteater row needs a non-empty 'conversations' list of "
                        "{'from': 'User'|'Assistant', 'value': text}; got "
                        f"{type(turns).__name__ if turns is not None else 'no such column'}")
    pairs: list[SftSeed] = []
    history: list[str] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise SeedError(f"{where}: conversations[{i}] needs 'from' and 'value'")
        role = str(turn["from"]).lower()
        text = _text(turn, "value", f"{where} conversations[{i}]", MAX_RESPONSE_CHARS)
        if role in ("user", "human"):
            history.append(text)
        elif role in ("assistant", "gpt"):
            if not history:
                raise SeedError(f"{where}: conversations[{i}] is an assistant turn with no user turn before it")
            prompt = history[-1] if len(history) == 1 else "\n\n".join(history)
            if len(prompt) > MAX_PROMPT_CHARS:
                raise SeedError(f"{where}: the conversation up to turn {i} is over {MAX_PROMPT_CHARS:,} characters")
            pairs.append(SftSeed(prompt, text, str(row.get("category") or "conversation")))
            history.append(text)
        else:
            raise SeedError(f"{where}: conversations[{i}] has role {turn['from']!r}; expected User or Assistant")
    return pairs


# -- judge seeds --------------------------------------------------------------------------

def load_judge(source: str, fmt: str = "alma", scale: int = 10, split: str = "train") -> list[JudgeSeed]:
    adapters = {"alma": _judge_alma, "helpsteer2": _judge_helpsteer2}
    if fmt not in adapters:
        raise SeedError(f"unknown judge seed format {fmt!r}; one of {sorted(adapters)}")
    seeds = [adapters[fmt](row, where, scale) for where, row in iter_rows(source, split)]
    if not seeds:
        raise SeedError(f"{source}: no judge annotations found; the file is empty")
    return seeds


def _score(value: Any, where: str, key: str, top: int) -> int:
    if isinstance(value, float) and not math.isfinite(value):
        raise SeedError(f"{where}: {key!r} must be an integer 0..{top}, got {value}; give the row a real score or remove it")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise SeedError(f"{where}: {key!r} must be an integer 0..{top}, got {value!r}")
    if not 0 <= int(value) <= top:
        raise SeedError(f"{where}: {key!r} = {value} is outside 0..{top}")
    return int(value)


def _judge_alma(row: dict[str, Any], where: str, scale: int) -> JudgeSeed:
    prompt = _text(row, "prompt", where, MAX_PROMPT_CHARS)
    response = _text(row, "response", where, MAX_RESPONSE_CHARS)
    if "score" not in row:
        raise SeedError(f"{where}: missing column 'score' (an integer 0..{scale}); add it")
    return JudgeSeed(prompt, response, _score(row["score"], where, "score", scale), str(row.get("group") or prompt))


def _judge_helpsteer2(row: dict[str, Any], where: str, scale: int) -> JudgeSeed:
    """HelpSteer2 rates helpfulness 0..4; we stretch it linearly onto 0..scale."""
    prompt = _text(row, "prompt", where, MAX_PROMPT_CHARS)
    if "helpfulness" not in row:
        raise SeedError(f"{where}: missing column 'helpfulness' (0..4), the HelpSteer2 attribute we map to the score")
    helpfulness = _score(row["helpfulness"], where, "helpfulness", 4)
    return JudgeSeed(prompt, _text(row, "response", where, MAX_RESPONSE_CHARS),
                     round(helpfulness * scale / 4), prompt)
