"""Near-dedup of prompts: MinHash over word 5-gram shingles, LSH banding, one survivor a group.

The split of work: the signatures are computed here with numpy (vectorised over all
shingles of all prompts at once, in chunks); the banding, the candidate pairs, their
check against the exact Jaccard similarity of the shingle sets, the connected components
and the survivor of each group are ``sql/near_dedup.sql``, run by DuckDB.

Shingles are word 5-grams of the normalised text (NFKC, lower case, punctuation to white
space: the normal form of exact dedup, in RE2 classes); a prompt of fewer than five words
is one shingle.
Two prompts are near-copies when the Jaccard similarity of their shingle sets is at least
``threshold``; a group is a connected component of near-copies, and one document of it
survives: a prompt of an earlier round if the group holds one, else the one with the most
near-copies in the group, then the lowest index (candidates in ``candidate_id`` order).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alma_data.sql import run_sql

# Word characters as Python's \w sees them (letters, numbers, underscore) and white space stay.
_NOT_WORD = r"[^\p{L}\p{N}_\s]"


@dataclass(frozen=True)
class MinHashConfig:
    ngram: int = 5
    bands: int = 20
    rows: int = 5
    """bands x rows hashes a signature. 20 x 5 puts a pair at Jaccard 0.8 in a shared
    bucket with probability 0.9996 and one at 0.5 with 0.47; the exact check on the
    candidates then keeps only pairs at or above ``threshold``."""
    threshold: float = 0.8
    seed: int = 1
    max_bucket: int = 200
    """A bucket with more documents than this is linked as a star to its first member,
    not pair by pair, so a degenerate bucket costs O(n) pairs, not O(n^2)."""

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mix (splitmix64's finaliser): spreads structured keys over all bits."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64, copy=True)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _word_hashes(words: pa.Array) -> np.ndarray:
    """A stable 64-bit hash per word (the same word, the same hash, in any chunk or run)."""
    enc = pc.dictionary_encode(words)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    vocab = enc.dictionary.to_pylist()
    table = np.fromiter(
        (int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little") for w in vocab),
        dtype=np.uint64, count=len(vocab),
    )
    return table[enc.indices.to_numpy(zero_copy_only=False)]


def shingles(texts: pa.Array | list[str], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Word n-gram shingle hashes of every text: (offsets of shape n+1, uint64 hashes).

    Text i's shingles are ``hashes[offsets[i]:offsets[i+1]]`` (with repeats, in order).
    """
    arr = pa.array(texts, type=pa.large_string()) if not isinstance(texts, (pa.Array, pa.ChunkedArray)) else texts
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.fill_null(arr, "")
    norm = pc.replace_substring_regex(pc.utf8_lower(pc.utf8_normalize(arr, "NFKC")), _NOT_WORD, " ")
    words = pc.utf8_split_whitespace(norm)
    # Runs of white space leave empty words behind: drop them.
    flat = pc.list_flatten(words)
    parent = pc.list_parent_indices(words).to_numpy(zero_copy_only=False)
    nonempty = pc.not_equal(flat, "")
    flat = flat.filter(nonempty)
    parent = parent[nonempty.to_numpy(zero_copy_only=False)]
    n = len(arr)
    counts = np.bincount(parent, minlength=n).astype(np.int64)
    w_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=w_off[1:])
    total = int(w_off[-1])
    h = _word_hashes(flat) if total else np.zeros(0, dtype=np.uint64)
    # Every word position p starts a shingle of up to `ngram` words, cut at its text's end.
    doc_of = parent
    end = w_off[1:][doc_of]
    pos = np.arange(total)
    acc = np.zeros(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(ngram):
            idx = pos + k
            inside = idx < end
            word = np.where(inside, h[np.minimum(idx, max(total - 1, 0))], np.uint64(0))
            acc = acc * np.uint64(0x100000001B3) + _splitmix64(word + np.uint64(k + 1)) * inside
    start = w_off[:-1][doc_of]
    keep = (pos + ngram <= end) | ((pos == start) & (counts[doc_of] < ngram))
    sh = _splitmix64(acc[keep])
    per_doc = np.bincount(doc_of[keep], minlength=n) if total else np.zeros(n, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_doc, out=offsets[1:])
    return offsets, sh


def minhash(offsets: np.ndarray, sh: np.ndarray, num_perm: int, seed: int = 1,
            chunk: int = 1 << 20, workers: int = 2) -> np.ndarray:
    """MinHash signatures (n, num_perm) uint32; a text without shingles gets all 0xFFFFFFFF.

    Permutation i is multiply-shift hashing: ((a_i * x + b_i) mod 2^64) >> 32, odd a_i.
    Chunks of whole texts (about ``chunk`` shingles each) bound the temporaries and run on
    ``workers`` threads (numpy releases the GIL in its loops).
    """
    n = len(offsets) - 1
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    sig = np.full((n, num_perm), 0xFFFFFFFF, dtype=np.uint32)
    counts = np.diff(offsets)
    cuts = np.searchsorted(offsets, np.arange(chunk, int(offsets[-1]), chunk))
    bounds = np.unique(np.concatenate([[0], cuts, [n]]))

    def one(d0: int, d1: int) -> None:
        docs = d0 + np.flatnonzero(counts[d0:d1])
        if not len(docs):
            return
        s0, s1 = int(offsets[docs[0]]), int(offsets[docs[-1] + 1])
        x = sh[s0:s1, None]
        starts = offsets[docs] - s0
        with np.errstate(over="ignore"):
            for i in range(0, num_perm, 8):
                v = x * a[None, i:i + 8]
                v += b[None, i:i + 8]
                v >>= np.uint64(32)
                sig[docs, i:i + 8] = np.minimum.reduceat(v, starts, axis=0)

    if workers > 1 and len(bounds) > 2:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, bounds[:-1], bounds[1:]))
    else:
        for d0, d1 in zip(bounds[:-1], bounds[1:]):
            one(d0, d1)
    return sig


def shingle_all(texts: pa.Array | list[str], ngram: int = 5, chunk: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """``shingles`` chunk by chunk of texts: its temporaries are a few arrays per word."""
    n = len(texts)
    parts = [shingles(texts[i:i + chunk], ngram) for i in range(0, n, chunk)] or [shingles([], ngram)]
    sh = np.concatenate([p[1] for p in parts])
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.concatenate([np.diff(p[0]) for p in parts]), out=offsets[1:])
    return offsets, sh


def signature_table(offsets: np.ndarray, sh: np.ndarray, sig: np.ndarray, used: np.ndarray,
                    config: MinHashConfig, first_doc: int = 0) -> pa.Table:
    """The rows ``sql/near_dedup.sql`` reads as its view ``docs``, for docs ``first_doc`` on.

    The one format of signatures: the in-process path hands it to DuckDB as Arrow, the
    datatrove step (``alma_data.near_dedup_datatrove``) writes it as Parquet shards.
    """
    n = len(offsets) - 1
    if first_doc + n > np.iinfo(np.int32).max:
        raise ValueError(f"near-dedup numbers docs as INTEGER: {first_doc + n:,} docs is past 2^31; split the input")
    return pa.table({
        "doc": pa.array(np.arange(first_doc, first_doc + n, dtype=np.int32)),
        "used": pa.array(np.asarray(used, dtype=bool)),
        "n_shingles": pa.array(np.diff(offsets).astype(np.int32)),
        "sig": pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1), pa.uint32()), config.num_perm),
        "shingles": pa.LargeListArray.from_arrays(pa.array(offsets - offsets[0]), pa.array(sh, pa.uint64())),
    })


def group_docs(con, config: MinHashConfig) -> pa.Table:
    """Run ``sql/near_dedup.sql`` over the view ``docs`` the caller made: (doc, grp, verdict) in doc order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DuckDB's note that Arrow output copies: the result is small
        result = run_sql(con, "near_dedup", bands=config.bands, rows=config.rows, threshold=config.threshold,
                         max_bucket=config.max_bucket).to_arrow_table()
    # In doc order whatever the connection's settings (preserve_insertion_order = false
    # has been seen to hand the rows back out of the file's ORDER BY).
    return result.sort_by("doc")


def group_near_copies(con, offsets: np.ndarray, sh: np.ndarray, sig: np.ndarray, used: np.ndarray,
                      config: MinHashConfig) -> pa.Table:
    """Run ``sql/near_dedup.sql`` over the signatures and shingles: (doc, grp, verdict)."""
    con.register("near_dedup_docs_arrow", signature_table(offsets, sh, sig, used, config))
    con.execute("CREATE OR REPLACE TEMP VIEW docs AS SELECT * FROM near_dedup_docs_arrow")
    try:
        return group_docs(con, config)
    finally:
        con.execute("DROP VIEW IF EXISTS docs")
        con.unregister("near_dedup_docs_arrow")


def near_dedup(con, texts: pa.Array | list[str], used: np.ndarray | None = None,
               config: MinHashConfig = MinHashConfig()) -> pa.Table:
    """Group near-copies among ``texts``; returns (doc, grp, verdict) for every text, in order.

    ``doc`` is the text's index, ``grp`` its group's survivor. ``used`` marks texts already
    in the data (earlier rounds): a group that holds one keeps it and drops the rest. verdict: ``unique`` (survives), ``near_duplicate`` (its group's
    survivor is another candidate), ``near_used_before`` (its group holds a used text),
    ``used``.
    """
    n = len(texts)
    used = np.zeros(n, dtype=bool) if used is None else np.asarray(used, dtype=bool)
    offsets, sh = shingle_all(texts, config.ngram)
    sig = minhash(offsets, sh, config.num_perm, config.seed)
    return group_near_copies(con, offsets, sh, sig, used, config)


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for checks and tests)."""
    off, sh = shingles([a, b], ngram)
    x, y = set(sh[off[0]:off[1]].tolist()), set(sh[off[1]:off[2]].tolist())
    return len(x & y) / len(x | y) if x or y else 1.0
