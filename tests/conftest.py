import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Set before torch starts its thread pool: spinning OpenMP threads collapse when several
# test processes share two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
def tiny_run(tmp_path_factory) -> Path:
    """One real three-round build of the tiny recipe, shared by the tests that only read it."""
    runs = tmp_path_factory.mktemp("runs")
    run_cli("build", "round=3", "recipe=tiny", f"runs_dir={runs}", "run=shared")
    return runs
