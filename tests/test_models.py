import json

import pytest

from alma_data.models import EMBEDDED, ModelError, resolve
from alma_data.store import Store


def test_embedded_tiny_model_is_a_normal_folder(tiny_model):
    cfg = json.loads(open(f"{tiny_model}/config.json").read())
    assert cfg["num_hidden_layers"] == 2
    assert resolve("tiny-random") == tiny_model  # cached, not rebuilt


def test_embedded_names_are_listed():
    assert {"smollm2-135m", "gemma3-270m", "tiny-random"} <= set(EMBEDDED)


def test_local_folder_hub_id_and_errors(tmp_path, tiny_model):
    assert resolve(tiny_model) == tiny_model
    assert resolve("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # left to from_pretrained
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="unknown model"):
        resolve("not a model")
    with pytest.raises(ModelError, match="inside a build"):
        resolve("run:round=1/m1a")


def test_run_checkpoint_reference(tiny_run):
    store = Store(tiny_run, "shared")
    assert resolve("run:round=1/m1a", store) == str(store.checkpoint_dir(1, "m1a"))
    assert resolve("run:shared/round=2/m2", store) == str(store.checkpoint_dir(2, "m2"))
    with pytest.raises(ModelError, match="does not exist"):
        resolve("run:round=9/m9", store)
