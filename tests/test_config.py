import pytest

from alma_data.config import Recipe, RecipeError, available_recipes, load_recipe


def test_bundled_recipes_load():
    assert {"default", "paper", "tiny"} <= set(available_recipes())
    for name in available_recipes():
        assert isinstance(load_recipe(name), Recipe)


def test_paper_recipe_has_the_papers_settings():
    r = load_recipe("paper")
    assert r.prompts.k == 50000
    assert r.responses.n == 200
    assert r.rounds == 10
    assert (r.prompts.shots_min, r.prompts.shots_max) == (3, 5)
    assert r.responses.checkpoint_mix == [1, 1, 1]
    assert r.judge.scale == 10
    assert r.select.pairs == "best_vs_random"


def test_dotted_overrides_are_typed():
    r = load_recipe("default", {"responses.n": "16", "model": "gemma3-270m", "train.learning_rate": "1e-4",
                                "judge.self_distill": "false", "responses.checkpoint_mix": "[2, 1, 1]"})
    assert r.responses.n == 16 and isinstance(r.responses.n, int)
    assert r.model == "gemma3-270m"
    assert r.train.learning_rate == pytest.approx(1e-4)
    assert r.judge.self_distill is False
    assert r.responses.checkpoint_mix == [2, 1, 1]


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(RecipeError) as e:
        load_recipe("default", {"responses.m": "3"})
    assert "responses.m" in str(e.value) and "responses.n" in str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe("default", {"nonsense": "1"})
    assert "nonsense" in str(e.value) and "model" in str(e.value)


def test_wrong_types_and_choices_are_refused():
    with pytest.raises(RecipeError, match="responses.n.*integer"):
        load_recipe("default", {"responses.n": "many"})
    with pytest.raises(RecipeError, match="select.pairs.*best_vs_random"):
        load_recipe("default", {"select.pairs": "worst"})
    with pytest.raises(RecipeError, match="section"):
        load_recipe("default", {"responses": "3"})
    with pytest.raises(RecipeError, match="true or false"):
        load_recipe("default", {"judge.self_distill": "maybe"})


def test_bad_recipe_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("responses:\n  n: [1\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(bad))
    bad.write_text("responses:\n  size: 3\n")
    with pytest.raises(RecipeError, match="responses.size"):
        load_recipe(str(bad))
    with pytest.raises(RecipeError, match="no recipe"):
        load_recipe("no-such-recipe")


def test_fingerprint_changes_with_any_knob():
    a, b = load_recipe("default"), load_recipe("default", {"responses.top_p": "0.9"})
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == load_recipe("default").fingerprint()


def test_string_keys_take_the_text_as_typed():
    from alma_data.config import load_recipe

    r = load_recipe("default", {"openai.model": "{name}-r{round}", "seeds.split": "2024", "executor": "ray"})
    assert r.openai.model == "{name}-r{round}" and r.seeds.split == "2024"
    # Where a build runs is not what it makes: the fingerprint ignores executor and server settings.
    assert r.fingerprint() == load_recipe("default", {"openai.model": "{name}-r{round}", "seeds.split": "2024",
                                                      "openai.base_url": "http://10.0.0.1:9/v1"}).fingerprint()
    assert r.fingerprint() != load_recipe("default", {"openai.model": "other", "seeds.split": "2024"}).fingerprint()
