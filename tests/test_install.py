"""A non-editable install finds its SQL files, recipes and seeds inside the package."""

import subprocess
import venv

from conftest import ROOT


def test_wheel_install_carries_resources(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=300)
    probe = (
        "import alma_data, alma_data.resources as r, training;"
        "assert 'site-packages' in alma_data.__file__, alma_data.__file__;"
        "print(r.resource_dir('sql'), r.resource_dir('pipelines'), r.resource_dir('seed'))"
    )
    out = subprocess.run([str(py), "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert out.count("_resources") == 3
    recipes = subprocess.run([str(env_dir / "bin" / "alma-data"), "recipes"], cwd=tmp_path, check=True,
                             capture_output=True, text=True).stdout
    assert "paper: " in recipes and "K=50000" in recipes
