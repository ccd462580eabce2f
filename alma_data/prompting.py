"""How prompts are rendered for the models: chat turns, the judge's question, few-shot prompts.

Training and sampling render a prompt the same way, so a checkpoint is asked exactly
what it was trained on.
"""

from __future__ import annotations

import re

# A plain template for tokenizers without a chat template (true base models).
PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
PLAIN_STOP = ["### Instruction:", "\n### "]

JUDGE_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question displayed below. Consider helpfulness, relevance, accuracy, "
    "depth and level of detail. Rate the response on a scale of 0 to {scale}, where 0 is unusable "
    "and {scale} is outstanding, by strictly following this format: \"Rating: [[5]]\".\n\n"
    "[Question]\n{prompt}\n\n"
    "[The Start of Assistant's Answer]\n{response}\n[The End of Assistant's Answer]\n\n"
)
FEW_SHOT_HEAD = "Here are some requests that users sent to an AI assistant.\n\n"
DELIMITER = "###"
"""Ends each request of a few-shot prompt; a candidate is cut at the first one it writes."""
RATING_PREFIX = "Rating: [["
RATING_SUFFIX = "]]"
_RATING_RE = re.compile(r"Rating:\s*\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer, prompt: str) -> str:
    """The text a model continues to answer ``prompt`` (its chat template, or a plain one)."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_TEMPLATE.format(prompt=prompt)


def stop_strings(tokenizer) -> list[str]:
    return [] if has_chat_template(tokenizer) else list(PLAIN_STOP)


def judge_question(prompt: str, response: str, scale: int = 10) -> str:
    return JUDGE_TEMPLATE.format(prompt=prompt, response=response, scale=scale)


def judge_target(score: int) -> str:
    return f"{RATING_PREFIX}{score}{RATING_SUFFIX}"


def parse_rating(text: str, scale: int = 10) -> float | None:
    """The score in a judge's free-text answer, or None when it gave none in range."""
    m = _RATING_RE.search(text)
    if not m:
        return None
    value = float(m.group(1))
    return value if 0 <= value <= scale else None


def few_shot_prompt(shots: list[str]) -> str:
    """Plain text, no chat template: a base model continues the list with a new request."""
    body = "".join(f"Request {i + 1}: {s.strip()}\n{DELIMITER}\n" for i, s in enumerate(shots))
    return f"{FEW_SHOT_HEAD}{body}Request {len(shots) + 1}:"
