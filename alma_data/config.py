"""Reading a recipe: a YAML file from ``pipelines/`` (or any path) plus ``key=value``
overrides with dotted paths (``responses.n=16``), built into the dataclasses of
:mod:`alma_data.recipe`. Unknown keys and values of the wrong type are refused with a message
that names the key and what is allowed; then every value is checked against its range
(:mod:`alma_data.recipe_checks`). The recipe's names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from alma_data.errors import RecipeError  # noqa: F401  (callers take it from here too)
from alma_data.recipe import (EXECUTION_KEYS, MEASUREMENT_KEYS, EvalConfig, JudgeConfig,  # noqa: F401  (re-exported)
                              OpenAIConfig, PromptConfig, RayConfig, Recipe, ResponseConfig, SeedConfig,
                              SelectConfig, StoreConfig, TrainConfig, VLLMConfig, fingerprint, without_keys)
from alma_data.recipe_checks import check_values
from alma_data.resources import resource_dir


def available_recipes() -> list[str]:
    return sorted(p.stem for p in resource_dir("pipelines").glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    bundled = resource_dir("pipelines") / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    raise RecipeError(
        f"no recipe {name_or_path!r}: use one of {available_recipes()} or a path to a .yaml file"
    )


def load_recipe(name_or_path: str = "default", overrides: dict[str, str] | None = None) -> Recipe:
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys to values, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    recipe = _build(Recipe, data, where=str(path))
    for key, raw in (overrides or {}).items():
        apply_override(recipe, key, raw)
    check_values(recipe)
    return recipe


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    return _build(Recipe, data, where="recipe")


def apply_override(recipe: Recipe, key: str, raw: str) -> None:
    """Set ``a.b.c=value`` on the recipe; the value is parsed as YAML and type-checked."""
    target: Any = recipe
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(target)}
        if part not in fields:
            prefix = ".".join(parts[:i])
            allowed = ", ".join(sorted((f"{prefix}." if prefix else "") + n for n in fields))
            raise RecipeError(f"unknown recipe key {key!r}; allowed here: {allowed}")
        f = fields[part]
        hint = typing.get_type_hints(type(target))[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(hint):
                raise RecipeError(f"{key!r} is a section; set one of its keys, e.g. {key}.{dataclasses.fields(hint)[0].name}=...")
            try:
                value = yaml.safe_load(raw) if isinstance(raw, str) else raw
            except yaml.YAMLError:
                value = raw
            if hint is str and isinstance(raw, str) and not isinstance(value, str):
                value = raw  # a string key takes the text as typed: openai.model={name}, seeds.sft=data/x.jsonl
            if hint == list[str] and isinstance(raw, str) and not isinstance(value, list):
                value = [v.strip() for v in raw.split(",") if v.strip()]  # judge.eval_sets=a.jsonl,org/set
            setattr(target, part, _check(hint, value, key))
        else:
            if not dataclasses.is_dataclass(hint):
                raise RecipeError(f"{'.'.join(parts[: i + 1])!r} is a value, not a section: use {'.'.join(parts[: i + 1])}=...")
            target = getattr(target, f.name)


def _build(cls: type, data: dict[str, Any], where: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        key = prefix + sorted(unknown)[0]
        allowed = ", ".join(sorted(prefix + n for n in names))
        raise RecipeError(f"{where}: unknown recipe key {key!r}; allowed here: {allowed}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise RecipeError(f"{where}: {prefix + name!r} is a section and needs a mapping, got {value!r}")
            kwargs[name] = _build(hint, value, where, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _check(hint, value, prefix + name)
    return cls(**kwargs)


def _check(hint: Any, value: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise RecipeError(f"{key!r} must be one of {', '.join(map(str, allowed))}; got {value!r}")
        return value
    if origin in (list, typing.List):
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise RecipeError(f"{key!r} must be a list of {item.__name__}, e.g. {key}=[1,1,1]; got {value!r}")
        return [_check(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise RecipeError(f"{key!r} must be a mapping, e.g. {key}='{{a: 1}}'; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(hint):
            try:
                return _check(arg, value, key)
            except RecipeError:
                continue
        raise RecipeError(f"{key!r} must be {hint}; got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{key!r} must be true or false; got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RecipeError(f"{key!r} must be an integer; got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
        raise RecipeError(f"{key!r} must be a number; got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise RecipeError(f"{key!r} must be a string; got {value!r}")
    return value
