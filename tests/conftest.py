import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Set before torch starts its thread pool: spinning OpenMP threads collapse when several
# test processes share two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A suite started in the background of a script (`... &`) inherits SIGINT ignored, and so would
# every build it starts: the Ctrl-C tests would wait for a build that cannot hear Ctrl-C.
# A handler set here is reset to the default in each child, which then hears it as a user's would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# pytest-xdist runs the suite on two workers (pyproject's addopts: ``-n auto --dist loadgroup``).
# A test file stays on one worker, so its module fixtures are built once; the files that start
# a local Ray instance share one worker, so two Ray clusters never start side by side.
_ONE_WORKER = {"test_ray": "ray", "test_launch": "ray"}


# The longest files first (1 Dec, two workers), so that no long file starts last and runs alone.
_LONGEST_FIRST = ["test_vllm_engine", "test_ray", "test_launch", "test_compat", "test_training_resume",
                  "test_remote_store", "test_lab"]


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        item.add_marker(pytest.mark.xdist_group(_ONE_WORKER.get(module, module)))
    # a stable sort: every worker collects the same order, as xdist requires
    rank = {m: i for i, m in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker a core, at most two. Each worker builds the session's tiny run
    once and holds a model or two (about 2.5 GiB at its peak); past two the saving is small."""
    return max(1, min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from alma_data.models import resolve

    return resolve("tiny-random")


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real ``alma-data`` command in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "alma_data", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TQDM_DISABLE": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"alma-data {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory) -> tuple[Path, str]:
    """One real three-round build of the tiny recipe, shared by the tests that only read it, and
    what it printed (stdout and stderr as one text). Built as a user's terminal would see it:
    120 columns, and no TQDM_DISABLE, so a library's progress bar would show (test_build_output)."""
    runs = tmp_path_factory.mktemp("runs")
    args = ["build", "round=3", "recipe=tiny", f"runs_dir={runs}", "run=shared"]
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    proc = subprocess.run([sys.executable, "-m", "alma_data", *args], capture_output=True, text=True, timeout=600,
                          env={**env, "COLUMNS": "120"})
    if proc.returncode != 0:
        raise AssertionError(f"alma-data {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return runs, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def tiny_run(tiny_build) -> Path:
    """The runs folder of the shared tiny build (its run: ``shared``)."""
    return tiny_build[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto's) on loopback for the session, and the environment a
    client of it needs. Yields a function that gives a fresh ``s3://`` runs folder URI."""
    import itertools
    import urllib.request

    port = _free_port()
    log = open(tmp_path_factory.mktemp("s3") / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"moto's S3 server did not start on 127.0.0.1:{port}; see {log.name}")
            time.sleep(0.3)
    env = {"AWS_ACCESS_KEY_ID": "alma-test", "AWS_SECRET_ACCESS_KEY": "alma-test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # subprocesses (builds, Ray workers) inherit the credentials
    counter = itertools.count()

    def runs_uri(bucket: str = "alma-test") -> str:
        return (f"s3://{bucket}/runs-{next(counter)}?endpoint_override=127.0.0.1:{port}&scheme=http"
                "&allow_bucket_creation=true")

    yield runs_uri
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
