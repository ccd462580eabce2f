"""Write a realistic run into the store layout, at a chosen scale, for benchmarks and tests.

    python benchmarks/make_data.py RUNS_DIR [--scale small|paper] [--run NAME] [--factor F]

Tables (``RUNS_DIR/NAME/round=R/<table>/part-NNNNN.parquet`` + ``_manifest.json``, so
``alma-data query runs_dir=RUNS_DIR run=NAME`` reads them):

- round=1 ``prompts``: the seed prompts (the "used" prompts of later rounds).
- round=2 ``prompt_candidates``: synthetic candidates with planted structure: parse
  rejects, exact copies after normalisation (case, white space, punctuation; some of
  seed prompts), near-copies (a few words changed, added or dropped), the rest distinct.
- round=2 ``prompt_clusters``: every distinct parsed candidate with a 32-dim embedding
  and its planted topic as ``cluster`` (``benchmarks/run.py`` re-clusters with k-means).
- round=2 ``prompts``, ``responses``, ``judgments``: K prompts x N responses, response
  lengths log-normal (median ~350 characters), judge scores from prompt difficulty,
  checkpoint and noise, real-valued expectations of an 11-way distribution, and ~1% of
  responses repeating an earlier sample of the same prompt (so scores tie).

``RUNS_DIR/NAME/_truth.parquet`` holds the plan: per candidate its kind and the candidate
(or seed prompt) it was copied from. Everything is generated with numpy, vectorised; only
the prompts (1M at paper scale) pass through Python strings.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alma_data import schemas  # noqa: E402
from alma_data.ids import prompt_id  # noqa: E402
from alma_data.stages.prompts import CANDIDATES, CLUSTERED, SYNTHETIC_PROMPTS  # noqa: E402
from alma_data.store import Store, write_table  # noqa: E402


@dataclass(frozen=True)
class Scale:
    candidates: int
    seeds: int
    prompts: int
    responses_per_prompt: int
    vocab: int = 30_000
    dim: int = 32


SCALES = {
    "small": Scale(candidates=6_000, seeds=300, prompts=300, responses_per_prompt=20),
    "paper": Scale(candidates=1_000_000, seeds=5_000, prompts=50_000, responses_per_prompt=200),
}

# Shares of the candidates (the rest are distinct originals).
REJECT_SHARE = 0.04
EXACT_COPY_SHARE = 0.08
SEED_COPY_SHARE = 0.005
NEAR_COPY_SHARE = 0.06
CHECKPOINTS = np.array(["m1a", "m1b", "m2"])
CHECKPOINT_BIAS = np.array([0.0, -0.1, 0.3])
REJECT_STATUSES = np.array(["too_short", "truncated", "too_long", "empty", "copy_of_shot"])

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hex_ids(keys: np.ndarray, salt: int) -> pa.Array:
    """16-hex-digit ids (the store's id format), unique for unique keys, built without Python strings."""
    v = splitmix64(keys.astype(np.uint64) ^ np.uint64(salt))
    nibbles = ((v[:, None] >> (np.uint64(4) * np.arange(15, -1, -1, dtype=np.uint64))) & np.uint64(15)).astype(np.uint8)
    data = _HEX[nibbles].reshape(-1)
    offsets = np.arange(0, 16 * len(keys) + 1, 16, dtype=np.int32)
    return pa.StringArray.from_buffers(len(keys), pa.py_buffer(offsets), pa.py_buffer(data.tobytes()))


def make_vocab(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-words (2-4 syllables) as one byte buffer with offsets, plus Zipf weights."""
    onset = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl", "ch", "sh"]
    nucleus = ["a", "e", "i", "o", "u", "ea", "ou", "ai"]
    coda = ["", "", "n", "r", "s", "t", "l", "nd", "ck"]
    words: set[str] = set()
    while len(words) < size:
        k = rng.integers(1, 4)
        word = "".join(rng.choice(onset) + rng.choice(nucleus) + rng.choice(coda) for _ in range(k))
        if len(word) >= 2:
            words.add(word)
    vocab = np.array(sorted(words, key=len))  # short words are the common ones
    weights = 1.0 / np.arange(1, size + 1) ** 1.05
    return vocab, weights / weights.sum()


def words_to_text(vocab_bytes: np.ndarray, vocab_off: np.ndarray, ids: np.ndarray, counts: np.ndarray) -> pa.Array:
    """Texts of words ``ids`` (split into texts by ``counts``) joined by spaces, vectorised."""
    wlen = np.diff(vocab_off)[ids] + 1  # each word and a space after it
    word_ends = np.cumsum(wlen)
    text_bytes = np.concatenate([[0], word_ends])[np.concatenate([[0], np.cumsum(counts)])]
    within = np.arange(int(text_bytes[-1])) - np.repeat(word_ends - wlen, wlen)
    src = np.repeat(vocab_off[:-1][ids], wlen) + within
    space = within == np.repeat(wlen - 1, wlen)
    data = np.where(space, np.uint8(32), vocab_bytes[np.minimum(src, len(vocab_bytes) - 1)])
    # drop the trailing space of every text that has words
    keep = np.ones(len(data), dtype=bool)
    keep[text_bytes[1:][counts > 0] - 1] = False
    data = data[keep]
    offsets = text_bytes - np.concatenate([[0], np.cumsum(counts > 0)])
    return pa.LargeStringArray.from_buffers(len(counts), pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(data.tobytes()))


class TextMaker:
    def __init__(self, rng: np.random.Generator, vocab_size: int):
        self.rng = rng
        vocab, self.weights = make_vocab(rng, vocab_size)
        self.vocab = vocab
        enc = [w.encode() for w in vocab]
        self.off = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in enc], out=self.off[1:])
        self.bytes = np.frombuffer(b"".join(enc), dtype=np.uint8)
        self.cdf = np.cumsum(self.weights)

    def word_ids(self, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), len(self.vocab) - 1)

    def texts(self, counts: np.ndarray, chunk: int = 100_000) -> pa.Array:
        """Texts of ``counts`` Zipf-drawn words each; in chunks, as the builder spends bytes x 8."""
        parts = [words_to_text(self.bytes, self.off, self.word_ids(int(c.sum())), c)
                 for c in (counts[i:i + chunk] for i in range(0, len(counts), chunk))]
        return pa.concat_arrays(parts) if parts else pa.array([], pa.large_string())


def exact_variant(text: str, r: float) -> str:
    """The same prompt after normalisation: another case, white space or punctuation."""
    if r < 0.25:
        return text.lower()
    if r < 0.5:
        return text.upper()
    if r < 0.7:
        return "  " + text.replace(" ", "  ", 3) + " "
    if r < 0.85:
        return text.rstrip("?.!") + "!"
    return text.replace(" ", ", ", 1)


def near_variant(words: list[str], rng: np.random.Generator, maker: TextMaker) -> list[str]:
    """A few words changed, added or dropped; half the time near the end (cheap in shingles)."""
    out = list(words)
    for _ in range(int(rng.integers(1, 4))):
        pos = len(out) - 1 - int(rng.integers(0, 3)) if rng.random() < 0.5 else int(rng.integers(0, len(out)))
        pos = max(0, min(pos, len(out) - 1))
        op = rng.random()
        new = str(maker.vocab[maker.word_ids(1)[0]])
        if op < 0.5:
            out[pos] = new
        elif op < 0.8:
            out.insert(pos, new)
        elif len(out) > 6:
            del out[pos]
    return out


def finish_prompt(words: list[str], r: float) -> str:
    text = " ".join(words)
    text = text[:1].upper() + text[1:]
    return text + ("?" if r < 0.6 else "." if r < 0.9 else "")


def make_prompts(scale: Scale, rng: np.random.Generator, maker: TextMaker):
    """Seed prompts and candidates with planted copies; returns (seeds, candidates, truth, topics, emb)."""
    n_seed, n = scale.seeds, scale.candidates
    lengths = np.clip(np.round(rng.lognormal(np.log(18), 0.7, n_seed + n)), 3, 120).astype(np.int64)
    base = maker.texts(lengths).to_pylist()
    r = rng.random(n_seed + n)
    seeds = [finish_prompt(base[i].split(), r[i]) for i in range(n_seed)]
    kinds = rng.choice(["reject", "exact_copy", "seed_copy", "near_copy", "original"], size=n,
                       p=[REJECT_SHARE, EXACT_COPY_SHARE, SEED_COPY_SHARE, NEAR_COPY_SHARE,
                          1 - REJECT_SHARE - EXACT_COPY_SHARE - SEED_COPY_SHARE - NEAR_COPY_SHARE])
    kinds[0] = "original"
    prompts: list[str] = [""] * n
    source = np.full(n, -1, dtype=np.int64)
    # Popular originals are copied more often: synthetic prompts skew to common queries.
    originals: list[int] = []
    long_originals: list[int] = []
    for i in range(n):
        kind = kinds[i]
        if kind == "exact_copy" and originals:
            j = originals[min(len(originals) - 1, int(rng.pareto(1.2) * 3))] if rng.random() < 0.3 else \
                originals[int(rng.integers(0, len(originals)))]
            prompts[i], source[i] = exact_variant(prompts[j], r[n_seed + i]), j
        elif kind == "seed_copy":
            j = int(rng.integers(0, n_seed))
            prompts[i], source[i] = exact_variant(seeds[j], r[n_seed + i]), j
        elif kind == "near_copy" and long_originals:
            j = long_originals[int(rng.integers(0, len(long_originals)))]
            prompts[i], source[i] = finish_prompt(near_variant(base[n_seed + j].split(), rng, maker), r[n_seed + j]), j
        else:
            kinds[i] = "reject" if kind == "reject" else "original"
            prompts[i] = finish_prompt(base[n_seed + i].split(), r[n_seed + i])
            if kind != "reject":
                originals.append(i)
                if lengths[n_seed + i] >= 25:
                    long_originals.append(i)
    status = np.where(kinds == "reject", REJECT_STATUSES[rng.integers(0, len(REJECT_STATUSES), n)], "ok")
    # Topics (the planted clusters): Zipf-popular, copies share their source's topic.
    n_topics = max(10, n // 5)
    topic_w = 1.0 / np.arange(1, n_topics + 1) ** 0.8
    topics = np.searchsorted(np.cumsum(topic_w / topic_w.sum()), rng.random(n)).clip(0, n_topics - 1)
    copied = (source >= 0) & (kinds != "seed_copy")
    topics[copied] = topics[source[copied]]
    centers = rng.normal(size=(n_topics, scale.dim)).astype(np.float32)
    emb = centers[topics] + 0.35 * rng.normal(size=(n, scale.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    truth = pa.table({"kind": pa.array(kinds), "source": pa.array(source)})
    return seeds, prompts, status, truth, topics.astype(np.int32), emb


def list_array(values: pa.Array, counts: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def write_prompt_tables(store: Store, scale: Scale, rng: np.random.Generator, maker: TextMaker) -> None:
    seeds, prompts, status, truth, topics, emb = make_prompts(scale, rng, maker)
    n = len(prompts)
    seed_ids = [prompt_id(s) for s in seeds]
    n_eval = max(1, len(seeds) // 100)
    write_table(store, 1, "prompts", pa.table({
        "prompt_id": seed_ids, "prompt": seeds, "source": ["seed"] * len(seeds), "category": ["bench"] * len(seeds),
        "split": ["eval"] * n_eval + ["train"] * (len(seeds) - n_eval)}, schema=schemas.PROMPTS),
        config_hash="bench", schema=schemas.PROMPTS)
    cand_ids = hex_ids(np.arange(n), 0xCA)
    pids = [prompt_id(p) for p in prompts]
    shot_counts = rng.integers(3, 6, n)
    shots = list_array(pa.array(seed_ids).take(pa.array(rng.integers(0, len(seeds), int(shot_counts.sum())))), shot_counts)
    candidates = pa.table({"candidate_id": cand_ids, "prompt_id": pids, "prompt": prompts, "shots": shots,
                           "status": pa.array(status)})
    write_table(store, 2, "prompt_candidates", candidates, config_hash="bench", schema=CANDIDATES, shard_rows=250_000)
    truth = truth.append_column("candidate_id", cand_ids).append_column("prompt_id", pa.array(pids))
    pq.write_table(truth, store.root / "_truth.parquet")
    # Every distinct parsed candidate, clustered by its planted topic.
    first = {}
    for i in np.flatnonzero(status == "ok"):
        first.setdefault(pids[i], i)
    idx = np.array(sorted(first.values()), dtype=np.int64)
    flat_emb = pa.array(emb[idx].reshape(-1))
    clustered = pa.table({
        "prompt_id": pa.array(pids).take(pa.array(idx)), "prompt": candidates["prompt"].take(pa.array(idx)),
        "shots": candidates["shots"].take(pa.array(idx)), "cluster": pa.array(topics[idx]),
        "embedding": list_array(flat_emb, np.full(len(idx), scale.dim)),
    })
    write_table(store, 2, "prompt_clusters", clustered, config_hash="bench", schema=CLUSTERED, shard_rows=250_000)
    # The round's K prompts: fresh clustered prompts, one per topic where possible.
    used = set(seed_ids)
    pick = [i for i in idx if pids[i] not in used][: scale.prompts]
    write_table(store, 2, "prompts", pa.table({
        "prompt_id": [pids[i] for i in pick], "prompt": [prompts[i] for i in pick], "source": ["synthetic"] * len(pick),
        "category": [None] * len(pick), "split": ["train"] * len(pick), "cluster": pa.array(topics[pick]),
        "shots": candidates["shots"].take(pa.array(pick))}, schema=SYNTHETIC_PROMPTS),
        config_hash="bench", schema=SYNTHETIC_PROMPTS)


def write_response_tables(store: Store, scale: Scale, rng: np.random.Generator, maker: TextMaker,
                          shard_rows: int = 100_000) -> None:
    prompt_ids = store.read(2, "prompts", columns=["prompt_id"])["prompt_id"]
    k, n = len(prompt_ids), scale.responses_per_prompt
    difficulty = rng.normal(6.0, 1.2, k)
    # One long text buffer that responses are cut from (different offsets, different texts).
    corpus_words = 8_000_000 if k * n > 1_000_000 else 400_000
    corpus = maker.texts(np.full(corpus_words // 1000, 1000), chunk=100)
    corpus_bytes = np.frombuffer(" ".join(corpus.to_pylist()).encode(), dtype=np.uint8)
    prompts_per_shard = max(1, shard_rows // n)
    rw = store.writer(2, "responses", config_hash="bench", schema=schemas.RESPONSES)
    jw = store.writer(2, "judgments", config_hash="bench", schema=schemas.JUDGMENTS)
    levels = np.arange(11, dtype=np.float32)
    for shard, p0 in enumerate(range(0, k, prompts_per_shard)):
        p1 = min(k, p0 + prompts_per_shard)
        rows = (p1 - p0) * n
        row0 = p0 * n
        p_idx = np.repeat(np.arange(p0, p1), n)
        sample = np.tile(np.arange(n, dtype=np.int32), p1 - p0)
        ckpt = (sample % 3).astype(np.int64)
        lengths = np.clip(np.round(rng.lognormal(np.log(350), 0.6, rows)), 20, 2000).astype(np.int64)
        latent = np.clip(difficulty[p_idx] + CHECKPOINT_BIAS[ckpt] + rng.normal(0, 1.3, rows), 0, 10)
        starts = rng.integers(0, len(corpus_bytes) - 2001, rows)
        # ~1% of samples repeat the previous sample of their prompt: same text, same score.
        repeat = (rng.random(rows) < 0.01) & (sample > 0)
        src = np.maximum.accumulate(np.where(repeat, 0, np.arange(rows)))
        lengths, latent, starts = lengths[src], latent[src], starts[src]
        # every byte's place in the corpus (int32: the corpus is far below 2 GiB)
        text_idx = np.repeat((starts - np.concatenate([[0], np.cumsum(lengths)[:-1]])).astype(np.int32), lengths)
        text_idx += np.arange(int(lengths.sum()), dtype=np.int32)
        offsets = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        response = pa.LargeStringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(corpus_bytes[text_idx].tobytes()))
        logits = -((levels[None, :] - latent[:, None].astype(np.float32)) ** 2) / (2 * 0.8 ** 2)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        score = (probs * levels).sum(1).astype(np.float64)
        response_ids = hex_ids(np.arange(row0, row0 + rows), 0x5E)
        rw.write_shard(shard, pa.table({
            "response_id": response_ids, "prompt_id": prompt_ids.take(pa.array(p_idx)),
            "checkpoint": pa.array(CHECKPOINTS[ckpt]), "sample_index": pa.array(sample),
            "seed": pa.array((np.int64(shard) << 20) + sample.astype(np.int64)), "response": response,
            "n_tokens": pa.array((lengths // 4).astype(np.int32)),
            "finish_reason": pa.array(np.where(lengths >= 1000, "length", "stop"))}))
        jw.write_shard(shard, pa.table({
            "response_id": response_ids, "score": pa.array(score), "score_int": pa.array(probs.argmax(1).astype(np.int32)),
            "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.astype(np.float32).reshape(-1)), 11).cast(schemas.SCORE_PROBS),
            "judge": pa.array(np.full(rows, "judge"))}))
    rw.finish()
    jw.finish()


def make_run(runs_dir: str | Path, scale: str | Scale = "small", run: str = "bench", factor: float = 1.0,
             seed: int = 0, quiet: bool = True) -> Store:
    sc = SCALES[scale] if isinstance(scale, str) else scale
    if factor != 1:
        sc = Scale(candidates=int(sc.candidates * factor), seeds=sc.seeds, prompts=int(sc.prompts * factor),
                   responses_per_prompt=sc.responses_per_prompt, vocab=sc.vocab, dim=sc.dim)
    store = Store(runs_dir, run)
    store.write_run({"benchmark": True, "scale": str(scale), "factor": factor, "seed": seed}, f"bench-{scale}-{factor}")
    rng = np.random.default_rng(seed)
    maker = TextMaker(rng, sc.vocab)
    t0 = time.time()
    write_prompt_tables(store, sc, rng, maker)
    t1 = time.time()
    write_response_tables(store, sc, rng, maker)
    if not quiet:
        print(f"wrote {store.root}: {sc.candidates:,} candidates in {t1 - t0:.1f}s, "
              f"{sc.prompts * sc.responses_per_prompt:,} responses and judgments in {time.time() - t1:.1f}s")
    return store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs_dir")
    ap.add_argument("--scale", choices=sorted(SCALES), default="small")
    ap.add_argument("--run", default="bench")
    ap.add_argument("--factor", type=float, default=1.0, help="multiply candidates and prompts (2: the 2x input)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    make_run(args.runs_dir, args.scale, args.run, args.factor, args.seed, quiet=False)


if __name__ == "__main__":
    main()
