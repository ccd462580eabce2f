"""A non-editable install finds its SQL files, recipes and seeds inside the package.

The wheel is built and installed with this interpreter (whose test extra brings
hatchling) into a folder of its own, put first on the path: a nested virtual
environment would see the base Python's packages, not this one's.
"""

import os
import subprocess
import sys

from conftest import ROOT


def test_wheel_install_carries_resources(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, text=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import alma_data, alma_data.resources as r, training;"
        f"assert alma_data.__file__.startswith({str(target)!r}), alma_data.__file__;"
        "print(r.resource_dir('sql'), r.resource_dir('pipelines'), r.resource_dir('seed'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True).stdout
    assert out.count("_resources") == 3
    assert (target / "alma_data" / "_resources" / "sql" / "best_of_n.sql").is_file()
    recipes = subprocess.run([sys.executable, str(target / "bin" / "alma-data"), "recipes"], cwd=tmp_path, env=env,
                             check=True, capture_output=True, text=True).stdout
    assert "paper: " in recipes and "K=50000" in recipes
