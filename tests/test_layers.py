"""The house's layers: a recipe key a stage names must exist, and each round is one list of
stages with one output each. (The import graph's floors, no circle, no stage importing a stage,
no foundation importing the lab, are read in tests/test_imports.py.)
"""

from __future__ import annotations


def test_a_misspelt_recipe_key_fails_where_a_stage_names_it():
    import pytest

    from alma_data.stage import Stage, recipe_keys

    assert recipe_keys("prompts.k", "store.shard_rows", "judge") == ("prompts.k", "store.shard_rows", "judge")
    with pytest.raises(KeyError, match="prompts.kk"):
        recipe_keys("prompts.kk")
    with pytest.raises(KeyError, match="seed.max_sft"):
        Stage("x", 1, "x", lambda ctx, stage, h: None, keys=("seed.max_sft",))


def test_each_round_is_one_list_of_stages_with_one_output_each():
    """For the bundled recipes and the switches that change a round's shape (DPO, no
    self-distillation), every stage writes one output no other stage of its round writes,
    reads only what an earlier stage wrote, and status lists exactly what build runs."""
    from alma_data.config import load_recipe
    from alma_data.plan import build_plan, round_stages

    for name, overrides in [("tiny", {}), ("default", {}), ("paper", {}), ("tiny", {"train.trainer": "dpo"}),
                            ("tiny", {"judge.self_distill": "false"})]:
        recipe = load_recipe(name, overrides)
        written: set[str] = set()
        for stage in build_plan(recipe, 4):
            assert stage.where not in written, (name, overrides, stage.where)
            for ref in stage.inputs:
                assert f"round={ref.round}/{ref.table}" in written, (stage.name, ref)
            for ref in stage.checkpoints:
                assert f"round={ref.round}/checkpoints/{ref.name}" in written, (stage.name, ref)
            written.add(stage.where)
        judges = [st.round for r in range(1, 5) for st in round_stages(recipe, r) if st.output == "judge"]
        assert judges == ([1, 2] if recipe.judge.self_distill else [1])

