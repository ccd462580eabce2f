"""The lab's base model M0: a tiny llama pretrained from scratch on the domain's text.

Why not the embedded SmolLM2-135M: one default build of three rounds took 54 minutes on the
2-core machine, and the lab needs about a dozen builds (three seeds, siblings). A model of
~1M weights with a 1,024-token vocabulary trained on this domain samples, trains and judges
in seconds, and starts far from perfect, which is what the loop needs.

Its "web" is what a base model would have seen of this domain: chat transcripts whose
answers are of every quality (0..3 faults, so M0 answers like an average of them), and lists
of user requests, some in the few-shot layout prompt synthesis uses
(:func:`alma_data.stages.prompts.few_shot_prompt`). Its byte-level BPE vocabulary is learnt on
that text and on the judge's question, so the judge's long instructions are a few tokens.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from dataclasses import asdict, dataclass

from alma_data.lab.domain import graded_answer, random_example

VERSION = 2
"""Bumped when the corpus or the training changes (the cache folder is named after it)."""


@dataclass(frozen=True)
class Shape:
    """One lab base model: its llama's size and its pretraining (the same corpus for all)."""
    hidden: int
    layers: int
    heads: int = 4
    steps: int = 1200
    lr: float = 3e-3
    batch: int = 16


MODELS = {
    "lab-tiny": Shape(hidden=128, layers=4),
    "lab-small": Shape(hidden=256, layers=6, steps=2400, lr=2e-3),
}
"""The lab's base models by embedded name. The model cache knows a model by its name only
(``<cache>/models/<name>``), so each size is its own name, and each folder records the
version and shape it was made with (``lab_base.json``), which
:func:`alma_data.lab.runner.check_base_model` compares with these before a lab build."""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def corpus(n_chats: int = 12000, n_lists: int = 2000, seed: int = 7) -> list[str]:
    from alma_data.prompting import DELIMITER, few_shot_prompt

    rng = random.Random(seed)
    docs = []
    for _ in range(n_chats):
        ex = random_example(rng)
        answer, _ = graded_answer(ex.spec, rng)
        docs.append(f"<|im_start|>user\n{ex.prompt}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n")
    for _ in range(n_lists):
        shots = [random_example(rng).prompt for _ in range(rng.randint(3, 6))]
        if rng.random() < 0.5:
            docs.append(few_shot_prompt(shots[:-1]) + f" {shots[-1]}\n{DELIMITER}\n")
        else:
            docs.append("".join(f"- {s}\n" for s in shots))
    return docs


def train_tokenizer(docs: list[str], vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from alma_data.prompting import judge_question

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    judge_text = [judge_question("q", "a", 10) + "Rating: [[5]]"] * 200
    tok.train_from_iterator(docs + judge_text, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def pretrain(out: Path, *, steps: int = 1200, block: int = 128, batch: int = 16, lr: float = 3e-3,
             hidden: int = 128, layers: int = 4, heads: int = 4, seed: int = 0, log=print) -> dict:
    """Pretrain M0 into ``out`` (save_pretrained layout); returns a summary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.time()
    docs = corpus()
    tokenizer = train_tokenizer(docs)
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer(d)["input_ids"])
    n_blocks = len(ids) // block
    data = torch.tensor(ids[: n_blocks * block]).view(n_blocks, block)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    loss = float("nan")
    for step in range(steps):
        batch_ids = data[torch.randint(0, n_blocks, (batch,), generator=gen)]
        out_ = model(input_ids=batch_ids, labels=batch_ids)
        out_.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out_.loss.detach())
        if step % 100 == 0 or step == steps - 1:
            log(f"  lab base model: step {step + 1}/{steps}, loss {loss:.3f}, {time.time() - t0:.0f}s")
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"steps": steps, "final_loss": loss, "tokens": len(ids), "parameters": model.num_parameters(),
            "seconds": round(time.time() - t0, 1)}


def build_embedded(out: Path, name: str = "lab-tiny") -> None:
    """The builder of the embedded lab model ``name`` (:mod:`alma_data.models`)."""
    import json
    import sys

    shape = MODELS[name]
    summary = pretrain(out, steps=shape.steps, batch=shape.batch, lr=shape.lr, hidden=shape.hidden,
                       layers=shape.layers, heads=shape.heads,
                       log=lambda m: print(f"{m} ({name})", file=sys.stderr, flush=True))
    (out / "lab_base.json").write_text(json.dumps({"version": VERSION, "name": name, "shape": asdict(shape),
                                                   **summary}, indent=1))
