"""The lab's domain: short instructions whose every requirement a program can check.

An instruction is a :class:`Spec`: one task (repeat a word, list members of a category,
sort numbers, add two numbers, reverse a list of words) and up to two modifiers (letter
case, separator, a required last word, a forbidden word). Each part has several
phrasings; a prompt is one phrasing of the task followed by one of each modifier.

The same tables of phrasings are read back by :mod:`alma_data.lab.oracle`, so every
prompt this module writes parses, and a synthetic prompt parses when the model kept to
the domain's language.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "paper", "music", "window", "bread",
         "moon", "door", "tree", "salt", "rain", "bird", "chair", "ocean", "glass", "sand"]
CATEGORIES = {
    "colors": ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"],
    "animals": ["cat", "dog", "horse", "lion", "mouse", "sheep", "goat", "bear", "wolf", "fox"],
    "fruits": ["banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon", "kiwi"],
}
END_WORDS = ["done", "thanks", "end", "finished", "okay"]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

# Placeholders: {word} {n} {cat} {nums} {a} {b} {words} {end} {ban}
TASK_PHRASES: dict[str, list[str]] = {
    "repeat": ["Write the word {word} {n} times.", "Repeat the word {word} {n} times.", "Say {word} {n} times.",
               "Please type {word} exactly {n} times.", "Give me the word {word}, {n} times."],
    "list": ["List {n} {cat}.", "Name {n} {cat}.", "Give me {n} {cat}.", "Write down {n} different {cat}.",
             "Can you name {n} {cat}?"],
    "sort_up": ["Sort these numbers from smallest to largest: {nums}.", "Put these numbers in increasing order: {nums}.",
                "Order from lowest to highest: {nums}."],
    "sort_down": ["Sort these numbers from largest to smallest: {nums}.", "Put these numbers in decreasing order: {nums}.",
                  "Order from highest to lowest: {nums}."],
    "add": ["What is {a} plus {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}.", "How much is {a} + {b}?"],
    "reverse": ["Reverse the order of these words: {words}.", "Write these words in reverse order: {words}.",
                "Say these words backwards: {words}."],
}
MODIFIER_PHRASES: dict[str, list[str]] = {
    "upper": ["Answer in uppercase.", "Use only capital letters.", "Write everything in capitals."],
    "lower": ["Answer in lowercase.", "Use only small letters.", "Do not use capital letters."],
    "comma": ["Separate them with commas.", "Use commas between the items."],
    "newline": ["Put each one on its own line.", "Write one per line."],
    "end": ["End your answer with the word {end}.", "Finish with the word {end}.", "Your last word must be {end}."],
    "ban": ["Do not use the word {ban}.", "Do not include {ban}.", "Avoid the word {ban}."],
}
# Which modifiers make sense with which task (no case for numbers, no separator for one number,
# a forbidden word only where the answer chooses its words).
ALLOWED = {
    "repeat": ("case", "sep", "end"), "list": ("case", "sep", "end", "ban"), "sort": ("sep", "end"),
    "add": ("end",), "reverse": ("case", "sep", "end"),
}


@dataclass(frozen=True)
class Spec:
    """What an instruction asks for; the oracle's whole view of a prompt."""

    task: str
    """repeat | list | sort | add | reverse"""
    word: str = ""
    n: int = 0
    category: str = ""
    numbers: tuple[int, ...] = ()
    descending: bool = False
    words: tuple[str, ...] = ()
    case: str = ""
    """"" | upper | lower"""
    sep: str = ""
    """"" (the task's usual one) | comma | newline"""
    end: str = ""
    ban: str = ""

    def items(self) -> list[str]:
        """The correct answer's items, before case, separator and last word."""
        if self.task == "repeat":
            return [self.word] * self.n
        if self.task == "sort":
            return [str(x) for x in sorted(self.numbers, reverse=self.descending)]
        if self.task == "add":
            return [str(sum(self.numbers))]
        if self.task == "reverse":
            return list(reversed(self.words))
        raise ValueError("a list has many correct answers: use correct_answer(spec, rng)")


@dataclass(frozen=True)
class Example:
    prompt: str
    spec: Spec
    phrasing: tuple[int, ...] = field(default=())


def _count(n: int, rng: random.Random) -> str:
    return NUMBER_WORDS[n] if rng.random() < 0.5 else str(n)


def random_spec(rng: random.Random) -> Spec:
    task = rng.choice(["repeat", "list", "sort", "add", "reverse"])
    if task == "repeat":
        spec = Spec("repeat", word=rng.choice(WORDS), n=rng.randint(2, 6))
    elif task == "list":
        spec = Spec("list", category=rng.choice(sorted(CATEGORIES)), n=rng.randint(2, 5))
    elif task == "sort":
        spec = Spec("sort", numbers=tuple(rng.sample(range(1, 40), rng.randint(3, 5))), descending=rng.random() < 0.5)
    elif task == "add":
        spec = Spec("add", numbers=(rng.randint(1, 50), rng.randint(1, 50)))
    else:
        spec = Spec("reverse", words=tuple(rng.sample(WORDS, rng.randint(3, 5))))
    mods = [m for m in ALLOWED[task] if rng.random() < 0.35][:2]
    changes: dict = {}
    for m in mods:
        if m == "case":
            changes["case"] = rng.choice(["upper", "lower"])
        elif m == "sep":
            changes["sep"] = rng.choice(["comma", "newline"])
        elif m == "end":
            changes["end"] = rng.choice(END_WORDS)
        elif m == "ban":
            changes["ban"] = rng.choice(CATEGORIES[spec.category])
    return replace(spec, **changes)


def render_prompt(spec: Spec, rng: random.Random) -> str:
    key = spec.task if spec.task != "sort" else ("sort_down" if spec.descending else "sort_up")
    joiner = ", " if rng.random() < 0.5 else " "
    fill = {"word": spec.word, "n": _count(spec.n, rng) if spec.n else "", "cat": spec.category,
            "nums": joiner.join(str(x) for x in spec.numbers), "words": joiner.join(spec.words),
            "a": str(spec.numbers[0]) if spec.task == "add" else "", "b": str(spec.numbers[1]) if spec.task == "add" else "",
            "end": spec.end, "ban": spec.ban}
    parts = [rng.choice(TASK_PHRASES[key]).format(**fill)]
    for mod in (spec.case, spec.sep, "end" if spec.end else "", "ban" if spec.ban else ""):
        if mod:
            parts.append(rng.choice(MODIFIER_PHRASES[mod]).format(**fill))
    return " ".join(parts)


def random_example(rng: random.Random) -> Example:
    spec = random_spec(rng)
    return Example(render_prompt(spec, rng), spec)


def answer_items(spec: Spec, rng: random.Random) -> list[str]:
    if spec.task == "list":
        pool = [w for w in CATEGORIES[spec.category] if w != spec.ban]
        return rng.sample(pool, spec.n)
    return spec.items()


def format_answer(spec: Spec, items: list[str], *, case: str | None = None, sep: str | None = None,
                  end: str | None = None) -> str:
    """Items joined as the spec asks (or as overridden, to make a wrong answer)."""
    case = spec.case if case is None else case
    sep = spec.sep if sep is None else sep
    end = spec.end if end is None else end
    words = list(items) + ([end] if end else [])
    if case == "upper":
        words = [w.upper() for w in words]
    elif case == "lower":
        words = [w.lower() for w in words]
    glue = {"comma": ", ", "newline": "\n", "space": " "}.get(sep, ", " if spec.task == "list" else " ")
    return glue.join(words)


def correct_answer(spec: Spec, rng: random.Random) -> str:
    return format_answer(spec, answer_items(spec, rng))


# -- answers of graded quality: a correct answer with some of these faults ---------------------
FAULTS = ("drop_item", "extra_item", "wrong_item", "shuffle", "wrong_case", "wrong_sep", "no_end", "use_ban",
          "chatter", "off_by", "garbage")


def faulty_answer(spec: Spec, rng: random.Random, faults: list[str]) -> str:
    """A correct answer spoiled by ``faults`` (those that do not apply to the spec are skipped)."""
    items = answer_items(spec, rng)
    case, sep, end = None, None, None
    for f in faults:
        if f == "garbage":
            return " ".join(rng.choice(WORDS + END_WORDS) for _ in range(rng.randint(1, 6)))
        if f == "drop_item" and len(items) > 1:
            items.pop(rng.randrange(len(items)))
        elif f == "extra_item" and spec.task != "add":
            items.insert(rng.randrange(len(items) + 1), rng.choice(items + WORDS))
        elif f == "wrong_item":
            i = rng.randrange(len(items))
            items[i] = str(rng.randint(1, 90)) if spec.task in ("sort", "add") else rng.choice(WORDS)
        elif f == "shuffle" and len(items) > 2:
            rng.shuffle(items)
        elif f == "wrong_case" and spec.case:
            case = "lower" if spec.case == "upper" else "upper"
        elif f == "wrong_sep":
            sep = rng.choice([s for s in ("comma", "newline", "space") if s != (spec.sep or "space")])
        elif f == "no_end" and spec.end:
            end = ""
        elif f == "use_ban" and spec.ban:
            items[rng.randrange(len(items))] = spec.ban
        elif f == "off_by" and spec.task == "add":
            items = [str(int(items[0]) + rng.choice([-3, -2, -1, 1, 2, 3]))]
    text = format_answer(spec, items, case=case, sep=sep, end=end)
    if "chatter" in faults:
        text = rng.choice(["Sure! ", "Here you go: ", "Okay, the answer is ", "Of course. "]) + text
    return text


def applicable_faults(spec: Spec) -> list[str]:
    """The faults that spoil an answer to this spec (a missing last word only where one is asked...)."""
    n = spec.n or len(spec.numbers) or len(spec.words) or 1
    keep = {"drop_item": n > 1 and spec.task != "add", "extra_item": spec.task != "add", "wrong_item": True,
            "shuffle": n > 2 and spec.task in ("sort", "reverse"), "wrong_case": bool(spec.case),
            "wrong_sep": bool(spec.sep), "no_end": bool(spec.end), "use_ban": bool(spec.ban), "chatter": True,
            "off_by": spec.task == "add", "garbage": True}
    return [f for f in FAULTS if keep[f]]


def graded_answer(spec: Spec, rng: random.Random, max_faults: int = 3) -> tuple[str, list[str]]:
    """An answer with 0..max_faults of the faults that apply to the spec, and the faults."""
    pool = applicable_faults(spec)
    faults = rng.sample(pool, min(len(pool), rng.randint(0, max_faults)))
    return (faulty_answer(spec, rng, faults) if faults else correct_answer(spec, rng)), faults
