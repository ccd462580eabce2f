"""The lab's oracle: the exact quality of an answer to a domain instruction, 0..10.

It reads the instruction back from the prompt's text (:func:`parse`; ``None`` for a prompt
outside the domain's language) and scores an answer against every requirement
(:func:`score`). The rubric: the task itself weighs 6, each modifier 1.5, and the score is
the weighted share of what was met, times 10. Partial credit inside the task: a right
count with wrong items is worth half, and so on (``_task_credit``). The task is judged on the
answer's items split at any separator (comma, line break, space), so the separator the prompt
asked for counts once, as its modifier: the right numbers in the right order one per line
where commas were asked score 8 (task 6 of 6, separator 0 of 1.5), not 0.

The oracle *measures* only: the held-out answers of each round, the judge's agreement
with it, the best-of-n picks. No stage of a build imports this module
(``tests/test_lab.py::test_oracle_is_never_read_by_a_build``), and the only time its
scores reach the factory is as the seed judge annotations, where it plays the human
annotator (:mod:`alma_data.lab.seeds`).
"""

from __future__ import annotations

import re
from functools import cache

from alma_data.lab.domain import CATEGORIES, MODIFIER_PHRASES, NUMBER_WORDS, TASK_PHRASES, Spec

TASK_WEIGHT = 6.0
MODIFIER_WEIGHT = 1.5

_SLOTS = {
    "word": r"(?P<word>[a-z]+)",
    "n": r"(?P<n>\d+|" + "|".join(NUMBER_WORDS.values()) + ")",
    "cat": r"(?P<cat>" + "|".join(CATEGORIES) + ")",
    "nums": r"(?P<nums>\d+(?:(?:, | )\d+)+)",
    "a": r"(?P<a>\d+)", "b": r"(?P<b>\d+)",
    "words": r"(?P<words>[a-z]+(?:(?:, | )[a-z]+)+)",
    "end": r"(?P<end>[a-z]+)", "ban": r"(?P<ban>[a-z]+)",
}


def _pattern(phrase: str) -> re.Pattern:
    """A phrasing with {slots} as a whole-sentence, case-insensitive regular expression."""
    parts = re.split(r"\{(\w+)\}", phrase)
    body = "".join(_SLOTS[p] if i % 2 else re.escape(p) for i, p in enumerate(parts))
    return re.compile(rf"^{body}$", re.IGNORECASE)


@cache
def _patterns() -> tuple[list, list]:
    tasks = [(key, _pattern(p)) for key, phrases in TASK_PHRASES.items() for p in phrases]
    mods = [(key, _pattern(p)) for key, phrases in MODIFIER_PHRASES.items() for p in phrases]
    return tasks, mods


def _number(text: str) -> int:
    words = {v: k for k, v in NUMBER_WORDS.items()}
    return words[text.lower()] if text.lower() in words else int(text)


def _split_list(text: str) -> list[str]:
    return [t for t in re.split(r",\s*|\s+", text.strip()) if t]


def parse(prompt: str) -> Spec | None:
    """The instruction a prompt states, or None when any sentence of it is not the domain's."""
    sentences = [s for s in re.split(r"(?<=[.?])\s+", " ".join(prompt.split())) if s]
    if not sentences:
        return None
    tasks, mods = _patterns()
    first = next(((k, m) for k, p in tasks if (m := p.match(sentences[0]))), None)
    if first is None:
        return None
    key, m = first
    g = {k: v for k, v in m.groupdict().items() if v is not None}
    if key == "repeat":
        spec = Spec("repeat", word=g["word"].lower(), n=_number(g["n"]))
    elif key == "list":
        spec = Spec("list", category=g["cat"].lower(), n=_number(g["n"]))
    elif key in ("sort_up", "sort_down"):
        spec = Spec("sort", numbers=tuple(int(x) for x in _split_list(g["nums"])), descending=key == "sort_down")
    elif key == "add":
        spec = Spec("add", numbers=(int(g["a"]), int(g["b"])))
    else:
        spec = Spec("reverse", words=tuple(w.lower() for w in _split_list(g["words"])))
    if not 1 <= (spec.n or 1) <= 10:
        return None
    fields: dict[str, str] = {}
    for sentence in sentences[1:]:
        hit = next(((k, mm) for k, p in mods if (mm := p.match(sentence))), None)
        if hit is None:
            return None
        k, mm = hit
        slot = {"upper": "case", "lower": "case", "comma": "sep", "newline": "sep"}.get(k, k)
        if slot in fields:
            return None  # two case (or separator...) requirements: not an instruction of the domain
        fields[slot] = k if slot in ("case", "sep") else mm.group(k).lower()
    from dataclasses import replace

    return replace(spec, **fields)


def _items(answer: str) -> list[str]:
    """The answer's items, trimmed of punctuation, split at any of the domain's separators
    (commas, line breaks, spaces) whatever separator the prompt asked for: the task is judged
    on the items alone, and the separator only by its own modifier (``checks``)."""
    raw = re.split(r"[,\s]+", answer)
    return [t for t in (r.strip().strip(".!?;:\"'").strip() for r in raw) if t]


def _count_credit(got: int, want: int) -> float:
    """1 for the right count; a wrong one keeps at most half, less the further off it is."""
    return 1.0 if got == want else max(0.0, 0.5 - abs(got - want) / max(want, 1) / 2)


def _positional(got: list[str], want: list[str]) -> float:
    return sum(a == b for a, b in zip(got, want)) / max(len(got), len(want), 1)


def _task_credit(spec: Spec, items: list[str]) -> float:
    low = [t.lower() for t in items]
    if spec.task == "repeat":
        same = sum(t == spec.word for t in low) / max(len(low), 1)
        return 0.5 * _count_credit(len(low), spec.n) + 0.5 * same
    if spec.task == "list":
        members = set(CATEGORIES[spec.category])
        valid = len({t for t in low if t in members}) / max(len(low), 1)
        return 0.5 * _count_credit(len(low), spec.n) + 0.5 * valid
    if spec.task == "add":
        want = str(sum(spec.numbers))
        if low == [want]:
            return 1.0
        if want in low:
            return 0.6
        nums = [int(t) for t in low if t.lstrip("-").isdigit()]
        return 0.3 if len(nums) == 1 and abs(nums[0] - int(want)) <= 2 else 0.0
    want = spec.items()
    if low == want:
        return 1.0
    same_set = 0.3 if sorted(low) == sorted(want) else 0.0
    return same_set + (0.7 if same_set else 0.5) * _positional(low, want)


def checks(spec: Spec, answer: str) -> list[tuple[str, float, float]]:
    """(requirement, weight, credit 0..1) for each requirement of the spec."""
    text = answer.strip()
    items = _items(text)
    out = []
    if spec.end:
        last = bool(items) and items[-1].lower() == spec.end
        out.append(("end", MODIFIER_WEIGHT, float(last)))
        if last:
            items = items[:-1]
    out.append(("task", TASK_WEIGHT, _task_credit(spec, items) if text else 0.0))
    if spec.case:
        letters = [c for c in text if c.isalpha()]
        ok = bool(letters) and all(c.isupper() if spec.case == "upper" else c.islower() for c in letters)
        out.append(("case", MODIFIER_WEIGHT, float(ok)))
    if spec.sep:
        mark, other = (",", "\n") if spec.sep == "comma" else ("\n", ",")
        ok = bool(text) and other not in text and (mark in text or len(items) <= 1)
        out.append(("sep", MODIFIER_WEIGHT, float(ok)))
    if spec.ban:
        out.append(("ban", MODIFIER_WEIGHT, float(spec.ban not in re.findall(r"[a-z]+", text.lower()))))
    return out


def score(spec: Spec, answer: str) -> float:
    """The answer's quality 0..10 (two decimals): the weighted share of requirements met."""
    parts = checks(spec, answer)
    return round(10.0 * sum(w * c for _, w, c in parts) / sum(w for _, w, _ in parts), 2)


def score_prompt(prompt: str, answer: str) -> float | None:
    """:func:`score` of an answer to a prompt's text; None for a prompt outside the domain."""
    spec = parse(prompt)
    return None if spec is None else score(spec, answer)
