"""engine=openai against a real server: llama.cpp's server (llama-cpp-python) on loopback,
serving the embedded SmolLM2-135M GGUF, started and stopped here.

Failures the server does not make on its own (503, 429, a server that never answers,
one that drops logprobs) come from a small real HTTP server in front of it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from alma_data.config import OpenAIConfig, load_recipe
from alma_data.engines import SamplingParams, expected_score, load_engine
from alma_data.engines.openai_engine import OpenAIEngineError, RequestCache, served_name
from alma_data.models import _smollm2_gguf, resolve
from alma_data.prompting import RATING_PREFIX, RATING_SUFFIX, judge_question, render_chat
from alma_data.scoring import real_valued_score

ROOT = Path(__file__).resolve().parent.parent
SERVED = "smollm2-135m"
# llama.cpp's own sampling defaults switched off, so it samples with temperature and top_p only.
PLAIN_SAMPLING = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
SCORES = [str(s) for s in range(11)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def post_json(url: str, body: dict, timeout: float = 60.0) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class LlamaServer:
    """``python -m llama_cpp.server`` on the embedded GGUF, as a child process."""

    def __init__(self, log_dir: Path):
        self.gguf = _smollm2_gguf(log_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log_dir / "llama-server.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
               "--port", str(self.port), "--model_alias", SERVED, "--n_threads", "2", "--n_ctx", "2048",
               "--verbose", "False"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp's server exited ({self.proc.returncode}); is llama-cpp-python[server] "
                                   f"installed (pip install 'alma-data[test]')? Its log:\n{self.log.read_text()[-3000:]}")
            try:
                if get_json(self.url + "/models")["data"]:
                    return
            except (OSError, ValueError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama.cpp's server did not answer on {self.url} within 90 s; log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    server = LlamaServer(tmp_path_factory.mktemp("llama"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(llama):
    """The running server (restarted if a test stopped it)."""
    llama.start()
    return llama


@pytest.fixture(scope="module")
def model_path():
    return resolve("smollm2-135m")


def config(url: str, **kw) -> OpenAIConfig:
    kw.setdefault("extra_body", dict(PLAIN_SAMPLING))
    return OpenAIConfig(base_url=url, **kw)


class Progress:
    """Stands in for the tqdm bar the stages pass."""

    def __init__(self):
        self.n = 0

    def update(self, k: int = 1) -> None:
        self.n += k


class FrontServer:
    """A real HTTP server on loopback in front of llama.cpp's: POSTs follow a script
    (an HTTP status, ``hang``, ``strip_logprobs`` or ``forward``), the rest are forwarded."""

    def __init__(self, upstream: str, script: list, then: str = "forward"):
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.script, self.then = list(script), then
        self.posts: list[tuple[float, object]] = []
        self.answers: dict[str, dict] = {}  # prompt -> the server's answer, for what it forwarded
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, body: bytes | None) -> tuple[int, bytes]:
                req = urllib.request.Request(front.upstream + self.path, data=body, method=self.command,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        return r.status, r.read()
                except urllib.error.HTTPError as e:
                    return e.code, e.read()

            def do_GET(self):
                self._send(*self._forward(None))

            def do_POST(self):
                with front.lock:
                    front.in_flight += 1
                    front.max_in_flight = max(front.max_in_flight, front.in_flight)
                try:
                    self._post()
                finally:
                    with front.lock:
                        front.in_flight -= 1

            def _post(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                k = len(front.posts)
                action = front.script[k] if k < len(front.script) else front.then
                front.posts.append((time.monotonic(), action))
                if isinstance(action, tuple):  # (status, headers)
                    status, headers = action
                    self._send(status, json.dumps({"error": {"message": f"planned {status}"}}).encode(), headers)
                elif action == "hang":
                    front.release.wait(30)
                    self.close_connection = True
                elif action == "strip_logprobs":
                    status, out = self._forward(body)
                    data = json.loads(out)
                    for choice in data.get("choices", []):
                        choice["logprobs"] = None
                    self._send(status, json.dumps(data).encode())
                else:
                    status, out = self._forward(body)
                    front.answers[json.loads(body)["prompt"]] = json.loads(out)
                    self._send(status, out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def judge_questions(tokenizer, n: int) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (ROOT / "data/seed/judge.jsonl").read_text().splitlines()[:n]]
    return [r["prompt"] for r in rows], [r["response"] for r in rows]


# -- sampling ---------------------------------------------------------------------------------
def test_sampling_is_reproducible_for_a_seed_and_follows_the_params(server, model_path):
    # llama-cpp-python's server keeps the last request's KV cache and reuses its longest
    # common prefix, and a prefill split that way rounds differently from a whole one: its
    # answer to a seed depends on which request came before. So the two calls compared go
    # one request at a time (a fixed order), each after the same priming request; with
    # requests racing in (max_concurrency=4) the same seed gave other text when the cores
    # were shared. The engine's own part, the seed of each sample, is the same either way.
    engine = load_engine("openai", model_path, options=config(server.url, cache=False, max_concurrency=1))
    tok = engine.tokenizer
    prompts = [render_chat(tok, p) for p in ("Name a fruit.", "Write one sentence about the sea.")]
    params = SamplingParams(n=2, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=7)
    warm = [render_chat(tok, "Say hello.")]
    prime = lambda: engine.generate(warm, SamplingParams(n=1, temperature=1.0, top_p=0.95, max_new_tokens=2, seed=0))
    bar = Progress()
    prime()
    t0 = time.perf_counter()
    a = engine.generate(prompts, params, progress=bar)
    seconds = time.perf_counter() - t0
    prime()
    b = engine.generate(prompts, params)
    c = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=8))
    texts = lambda out: [[s.text for s in row] for row in out]
    assert len(a) == 2 and all(len(row) == 2 for row in a)
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert len({s for row in texts(a) for s in row}) > 2  # samples of one prompt differ from each other
    assert all(s.finish_reason in ("stop", "length") and 0 < s.n_tokens <= 10 for row in a for s in row)
    assert any(s.finish_reason == "length" and s.n_tokens == 10 for row in a for s in row)
    assert bar.n == 4
    assert engine.stats.requests == 14 and engine.stats.cache_hits == 0 and engine.stats.retries == 0
    assert engine.stats.generated_sequences == 14 and engine.stats.tokens_per_second > 0
    print(f"\n[openai engine] {4 / seconds:.2f} completions/s of 10 tokens through llama.cpp's server "
          f"(max_concurrency=1), {engine.stats.tokens_per_second:.1f} tok/s over all three calls")

    # Stop strings: the server cuts there, and the sample says why it ended.
    sample = next(s.text for row in a for s in row if len(s.text) > 6)
    stop = sample[3:5]
    cut = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=7,
                                                  stop=[stop]))
    assert all(stop not in s.text for row in cut for s in row)
    assert any(s.finish_reason == "stop" for row in cut for s in row)
    engine.close()


def test_requests_in_flight_are_bounded_by_max_concurrency(server, model_path):
    with FrontServer(server.url, []) as front:
        engine = load_engine("openai", model_path, options=config(front.url, cache=False, max_concurrency=3))
        out = engine.generate(["Once upon a time"], SamplingParams(n=7, temperature=1.0, max_new_tokens=3, seed=1))
    assert len(out[0]) == 7 and len(front.posts) == 7
    # llama.cpp's server answers one at a time, so the engine's three wait there together.
    assert front.max_in_flight == 3
    engine.close()


# -- score reading ----------------------------------------------------------------------------
def by_hand(answers: dict[str, dict], question: str) -> np.ndarray:
    """The renormalised probabilities of "0]]".."10]]", from the server's answers as it sent them."""
    top = lambda prompt: answers[prompt]["choices"][0]["logprobs"]["top_logprobs"][0]
    first = top(question)
    logp = [first[str(d)] + top(question + str(d))["]]"] for d in range(10)]
    logp.append(first["1"] + top(question + "1")["0"] + top(question + "10")["]]"])
    p = np.exp(np.array(logp) - max(logp))
    return p / p.sum()


def test_scores_come_from_the_servers_logprobs_and_agree_with_transformers(server, model_path):
    with FrontServer(server.url, []) as front:  # forwards everything and keeps the answers
        engine = load_engine("openai", model_path, options=config(front.url, cache=False, max_concurrency=2))
        tok = engine.tokenizer
        # "10" is two tokens in SmolLM2's tokenizer and "1" is its prefix: the suffix tells them apart.
        assert len(tok("10", add_special_tokens=False).input_ids) == 2
        prompts, responses = judge_questions(tok, 3)
        bar = Progress()
        t0 = time.perf_counter()
        probs, score, score_int = real_valued_score(engine, prompts, responses, 10, progress=bar)
        seconds = time.perf_counter() - t0
    assert probs.shape == (3, 11) and bar.n == 3
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(score, expected_score(probs))
    assert engine.stats.scored == 3 and engine.stats.missing_logprobs == 0
    # Root, "]]" after each of 0..9, "0" after "1", "]]" after "10": 12 one-token requests a pair.
    assert engine.stats.requests == 3 * 12 == len(front.answers)
    print(f"\n[openai engine] {3 / seconds:.2f} judge pairs/s ({36 / seconds:.1f} requests/s) through llama.cpp's server")

    # Exactly: the engine's numbers are the server's own logprobs, as it sent them, renormalised.
    questions = [render_chat(tok, judge_question(p, r)) + RATING_PREFIX for p, r in zip(prompts, responses)]
    for q, row in zip(questions, probs):
        np.testing.assert_allclose(row, by_hand(front.answers, q), rtol=1e-12)

    # Loosely: the local transformers engine on the dequantised weights of the same GGUF
    # (the server runs them in Q4_1 with 8-bit activations, so the digits differ a little).
    local = load_engine("transformers", model_path, dtype="float32", score_batch=3)
    ref, ref_score, ref_int = real_valued_score(local, prompts, responses, 10)
    local.close()
    assert (score_int == ref_int).all()
    assert np.abs(probs - ref).max() < 0.05, np.abs(probs - ref).max()
    assert np.abs(score - ref_score).max() < 0.2, (score, ref_score)
    print(f"[openai engine] vs transformers: max |p| difference {np.abs(probs - ref).max():.4f}, "
          f"scores {np.round(score, 3)} vs {np.round(ref_score, 3)}")
    engine.close()


def test_a_candidate_outside_the_top_logprobs_reads_as_their_lowest(server, model_path):
    with FrontServer(server.url, []) as front:
        engine = load_engine("openai", model_path, options=config(front.url, cache=False, top_logprobs=5))
        q = render_chat(engine.tokenizer, judge_question("Name a fruit.", "An apple.")) + RATING_PREFIX
        probs = engine.score_candidates([q], ["5", " zebra"])
    root = front.answers[q]["choices"][0]["logprobs"]["top_logprobs"][0]
    first = engine.tokenizer.decode(engine.candidate_ids(q, " zebra")[:1])
    assert "5" in root and first not in root
    assert engine.stats.missing_logprobs >= 1
    # " zebra" is at most what its first token's stand-in (the lowest listed value) allows.
    floor = min(root.values())
    assert probs[0, 1] <= np.exp(floor) / (np.exp(root["5"]) + np.exp(floor)) + 1e-12
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-12)
    engine.close()


def test_a_server_without_logprobs_is_a_clear_error(server, model_path):
    with FrontServer(server.url, [], then="strip_logprobs") as front:
        engine = load_engine("openai", model_path, options=config(front.url, cache=False, max_retries=0))
        q = render_chat(engine.tokenizer, judge_question("Name a fruit.", "An apple.")) + RATING_PREFIX
        with pytest.raises(OpenAIEngineError) as err:
            engine.score_candidates([q], SCORES, suffix=RATING_SUFFIX)
        message = str(err.value)
        assert front.url in message and SERVED in message and "logprobs" in message
        assert "vLLM" in message and "engine=transformers" in message
        # Sampling needs no logprobs and still works through it.
        (sample,), = engine.generate([q], SamplingParams(n=1, temperature=0.0, max_new_tokens=4))
        assert sample.n_tokens > 0
        engine.close()


# -- the request cache ------------------------------------------------------------------------
def test_cache_answers_without_the_server(server, model_path, tmp_path):
    cache_dir = tmp_path / "_cache" / "engine"
    opts = config(server.url, model=SERVED)
    engine = load_engine("openai", model_path, options=opts, cache_dir=cache_dir)
    tok = engine.tokenizer
    prompts = [render_chat(tok, p) for p in ("Name a colour.", "Say hello.")]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3)
    question = render_chat(tok, judge_question("Name a colour.", "Blue.")) + RATING_PREFIX
    first = engine.generate(prompts, params)
    first_probs = engine.score_candidates([question], SCORES, suffix=RATING_SUFFIX)
    assert engine.stats.requests == 4 + 12 and engine.stats.cache_hits == 0
    again = engine.generate(prompts, params)
    assert again == first and engine.stats.cache_hits == 4 and engine.stats.requests == 16
    engine.close()
    assert len(RequestCache(cache_dir / f"{SERVED}.sqlite")) == 16

    # With the server stopped, a fresh engine (a resumed build) answers from the cache alone.
    server.stop()
    resumed = load_engine("openai", model_path, options=opts, cache_dir=cache_dir)
    bar = Progress()
    assert resumed.generate(prompts, params, progress=bar) == first
    np.testing.assert_array_equal(resumed.score_candidates([question], SCORES, suffix=RATING_SUFFIX), first_probs)
    assert resumed.stats.cache_hits == 16 and resumed.stats.requests == 0 and bar.n == 4
    # A request not in the cache does go to the (stopped) server.
    with pytest.raises(OpenAIEngineError, match="cannot reach"):
        resumed.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=4))
    resumed.close()


WRITER = """
import sys, time
from pathlib import Path
from alma_data.engines.openai_engine import RequestCache
cache = RequestCache(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    cache.put(RequestCache.key({"writer": sys.argv[2], "i": i}), {"text": "x" * 500, "i": i})
    if i == 0:
        print("ready", flush=True)
"""


def test_cache_file_survives_concurrent_writers_and_a_killed_one(tmp_path):
    path = tmp_path / "m.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda name, n: subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(n)],
                                           stdout=subprocess.PIPE, text=True, env=env)
    a, b, killed = run("a", 300), run("b", 300), run("killed", 100000)
    for p in (a, b, killed):
        assert p.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    killed.kill()
    assert a.wait(60) == 0 and b.wait(60) == 0
    killed.wait()
    cache = RequestCache(path)
    assert cache._con.execute("pragma integrity_check").fetchone()[0] == "ok"
    for name in ("a", "b"):
        assert all(cache.get(RequestCache.key({"writer": name, "i": i})) == {"text": "x" * 500, "i": i}
                   for i in range(300))
    n_killed = len(cache) - 600
    assert 0 < n_killed < 100000
    # What the killed writer committed is whole: its first n answers, each readable.
    assert cache.get(RequestCache.key({"writer": "killed", "i": n_killed - 1}))["i"] == n_killed - 1
    cache.close()


# -- retries, timeouts and errors -------------------------------------------------------------
def test_retries_back_off_on_503_and_honour_retry_after_on_429(server, model_path):
    direct = load_engine("openai", model_path, options=config(server.url, cache=False))
    q = [render_chat(direct.tokenizer, "Name a fruit.")]
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=10, seed=11)
    expected = direct.generate(q, params)
    direct.close()
    script = [(503, {}), (503, {}), (429, {"Retry-After": "0.3"})]
    with FrontServer(server.url, script) as front:
        engine = load_engine("openai", model_path, options=config(front.url, cache=False, max_retries=4))
        assert engine.generate(q, params) == expected
        times = [t for t, _ in front.posts]
    assert len(times) == 4 and engine.stats.retries == 3 and engine.stats.requests == 1
    gaps = np.diff(times)
    # Exponential backoff: 0.5 s, then 1 s (less up to 25% jitter); then the server's
    # Retry-After, shorter than the 1.5-2 s the backoff would have waited.
    assert gaps[0] >= 0.37 and gaps[1] >= 0.74, gaps
    assert 0.28 <= gaps[2] < 1.4, gaps
    engine.close()

    with FrontServer(server.url, [], then=(429, {})) as front:
        engine = load_engine("openai", model_path, options=config(front.url, cache=False, max_retries=2))
        with pytest.raises(OpenAIEngineError) as err:
            engine.generate(q, params)
        assert len(front.posts) == 3
    assert front.url in str(err.value) and "429" in str(err.value) and "max_retries" in str(err.value)
    engine.close()


def test_a_server_that_never_answers_times_out_after_the_retries(server, model_path):
    with FrontServer(server.url, [], then="hang") as front:
        engine = load_engine("openai", model_path, options=config(front.url, cache=False, timeout=0.5, max_retries=1))
        t0 = time.monotonic()
        with pytest.raises(OpenAIEngineError) as err:
            engine.generate(["Hello"], SamplingParams(n=1, max_new_tokens=4))
        waited = time.monotonic() - t0
        assert len(front.posts) == 2
    message = str(err.value)
    assert front.url in message and "did not answer within openai.timeout=0.5s" in message
    assert waited >= 1.0
    engine.close()


def test_an_unreachable_server_and_an_unserved_model_say_what_to_do(server, model_path):
    closed = f"http://127.0.0.1:{free_port()}/v1"
    engine = load_engine("openai", model_path, options=config(closed, max_retries=0))
    with pytest.raises(OpenAIEngineError) as err:
        engine.generate(["Hello"], SamplingParams(n=1, max_new_tokens=4))
    assert closed in str(err.value) and "llama_cpp.server" in str(err.value) and "openai.base_url" in str(err.value)

    engine = load_engine("openai", model_path, name="m1a", round=2, options=config(server.url, model="alma-{name}-r{round}"))
    with pytest.raises(OpenAIEngineError) as err:
        engine.generate(["Hello"], SamplingParams(n=1, max_new_tokens=4))
    assert "'alma-m1a-r2'" in str(err.value) and SERVED in str(err.value) and server.url in str(err.value)

    # Without the openai client installed, the engine says which extra to install.
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "openai", None)  # what Python does for a package that is not installed
        with pytest.raises(ImportError, match=r"pip install 'alma-data\[openai\]'"):
            load_engine("openai", model_path, options=config(server.url))

    # An empty openai.model is the server's first model.
    engine = load_engine("openai", model_path, options=config(server.url, model=""))
    assert engine.model == SERVED
    assert served_name("{name}", "judge", 2) == "judge" and served_name("{name}-r{round}", "base", None) == "base-r0"


# -- stages through the engine ----------------------------------------------------------------
def test_prompt_candidate_stage_runs_on_the_server_and_resumes_from_the_cache(server, tmp_path):
    """Round 2's first stage asks the base model, which is what the server serves."""
    from alma_data.plan import stages_of
    from alma_data.runner import run_stages
    from alma_data.stage import Context
    from alma_data.store import Store

    recipe = load_recipe("tiny", {"model": "smollm2-135m", "engine": "openai", "openai.base_url": server.url,
                                  "openai.model": SERVED, "openai.extra_body": json.dumps(PLAIN_SAMPLING),
                                  "prompts.candidates": "8", "prompts.max_new_tokens": "12"})
    store = Store(tmp_path / "runs", "openai")
    ctx = Context(store, recipe, quiet=True)
    run_stages(ctx, stages_of(recipe, 1, "prompts", "sft", "judge_seed") + stages_of(recipe, 2, "prompt_candidates"))
    table = store.read(2, "prompt_candidates").to_pylist()
    assert len(table) == 8 and all(r["status"] for r in table)
    assert any(r["status"] == "ok" and len(r["prompt"].split()) >= recipe.prompts.min_words for r in table)
    assert len(RequestCache(store.root / "_cache" / "engine" / f"{SERVED}.sqlite")) == 8

    # A build killed after its first shard: shards and manifest after it are gone. With the
    # server stopped, the rerun rewrites them from the cache, row for row.
    table_dir = store.table_dir(2, "prompt_candidates")
    (table_dir / "_manifest.json").unlink()
    for shard in sorted(table_dir.glob("part-*.parquet"))[1:]:
        shard.unlink()
    server.stop()
    run_stages(ctx, stages_of(recipe, 2, "prompt_candidates"))
    assert store.read(2, "prompt_candidates").to_pylist() == table
