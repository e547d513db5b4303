"""Dataset recipes: each builds a prepared dataset (``dataset.json`` + tar shards) from sources on this machine.

A recipe is a module with ``NAME``, ``VERSION`` (int), a dataclass ``Options`` (every field documented),
``DEBIAN_PACKAGES`` (what to ``apt-get install``) and ``build(out, options, progress=True) -> DatasetInfo``.

    from lightning_sep.data.recipes import get_recipe, options_from
    recipe = get_recipe("demo-speech-noise")
    info = recipe.build("data/demo-speech-noise", options_from(recipe, ["test_clips=50"], seed=1))

or ``python -m lightning_sep.data.recipes demo-speech-noise --out data/demo-speech-noise --seed 1``.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from types import ModuleType
from typing import Any, Iterable, Mapping

from . import demo_chorales, demo_digits, demo_speech_noise, demo_urban, dsd100, musdb18, urban_sed, urbansound8k

RECIPES: dict[str, ModuleType] = {
    m.NAME: m for m in (demo_speech_noise, demo_chorales, demo_digits, demo_urban, musdb18, dsd100, urbansound8k,
                        urban_sed)
}


class RecipeError(ValueError):
    """An unknown recipe or a bad ``key=value`` option; the message lists what is valid."""


def get_recipe(name: str) -> ModuleType:
    """The recipe module called ``name``; an unknown name raises ``RecipeError`` listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}") from None


def _convert(recipe: ModuleType, key: str, value: Any, kind: Any) -> Any:
    if not isinstance(value, str):
        return value
    origin = typing.get_origin(kind)
    if origin is typing.Union or (origin is not None and type(None) in typing.get_args(kind)):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value.lower() in ("none", "null", ""):
            return None
        kind = args[0] if len(args) == 1 else str
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if kind in (str, os.PathLike) or kind is None:
            return value
        return kind(value)
    except (TypeError, ValueError):
        name = getattr(kind, "__name__", str(kind))
        raise RecipeError(f"{recipe.NAME}: option {key}={value!r} is not a valid {name}") from None


def options_from(recipe: ModuleType, overrides: Iterable[str] | Mapping[str, Any] = (),
                 seed: int | None = None) -> Any:
    """``recipe.Options`` with ``key=value`` strings (or a mapping) applied, then ``seed`` if not None.

    Values are converted to the field's type; an unknown key raises ``RecipeError`` listing the valid ones.
    """
    fields = {f.name: f for f in dataclasses.fields(recipe.Options)}
    hints = typing.get_type_hints(recipe.Options)
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        pairs = []
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise RecipeError(f"{recipe.NAME}: expected key=value, got {item!r}")
            pairs.append((key.strip().lstrip("-"), value))
    values = {}
    for key, value in pairs:
        if key not in fields:
            raise RecipeError(f"{recipe.NAME}: unknown option {key!r}; valid options: {', '.join(fields)}")
        values[key] = _convert(recipe, key, value, hints.get(key))
    if seed is not None:
        values["seed"] = int(seed)
    return recipe.Options(**values)


def option_docs(recipe: ModuleType) -> dict[str, str]:
    """Each option's default and its comment from the ``Options`` source, for ``--help`` texts."""
    import inspect

    lines = inspect.getsource(recipe.Options).splitlines()
    docs = {}
    for f in dataclasses.fields(recipe.Options):
        comment = ""
        for line in lines:
            stripped = line.strip()
            if stripped.startswith(f"{f.name}:") and "#" in stripped:
                comment = stripped.split("#", 1)[1].strip()
                break
        docs[f.name] = f"{f.default!r}" + (f"  {comment}" if comment else "")
    return docs


def build(name: str, out: str | os.PathLike, seed: int | None = None,
          overrides: Iterable[str] | Mapping[str, Any] = (), progress: bool = True):
    """Build recipe ``name`` into ``out``; returns the ``DatasetInfo``."""
    recipe = get_recipe(name)
    return recipe.build(out, options_from(recipe, overrides, seed=seed), progress=progress)


__all__ = ["RECIPES", "RecipeError", "build", "get_recipe", "option_docs", "options_from"]
