"""Reading a recipe: packaged names or YAML paths, bounded in size and alias expansion, merged with overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent_cir.config.base import ConfigError
from agent_cir.config.recipe import Recipe, deep_merge, recipe_from_dict


def recipes_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "recipes"


def available_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


MAX_RECIPE_BYTES = 1_000_000
MAX_YAML_NODES = 100_000
"""Nodes a recipe may have once its aliases are expanded: a real recipe has a few hundred; an alias tree
(a "billion laughs") that expands to billions would stall every later dump and hash of the recipe."""


def _expanded_nodes(root: yaml.Node, source: str) -> int:
    """How many nodes ``root`` stands for with every alias expanded (shared nodes counted once per use)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    # Iterative post-order walk: a deep document must not exhaust Python's recursion limit here.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        ident = id(node)
        if ident in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if not children_done:
            if ident in visiting:
                raise ConfigError(f"recipe {source}: an alias refers to a node that contains it (a recursive alias)")
            visiting.add(ident)
            stack.append((node, True))
            for child in children:
                if id(child) in visiting:
                    raise ConfigError(
                        f"recipe {source}: an alias refers to a node that contains it (a recursive alias)"
                    )
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        visiting.discard(ident)
        total = 1 + sum(sizes[id(child)] for child in children)
        if total > MAX_YAML_NODES:
            mark = node.start_mark
            raise ConfigError(
                f"recipe {source} line {mark.line + 1}: with its aliases (*name) expanded this part has more than "
                f"{MAX_YAML_NODES:,} values; a recipe needs a few hundred. Write the values out, or share fewer"
            )
        sizes[ident] = total
    return sizes[id(root)]


def load_yaml_bounded(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``, refusing alias trees that expand past :data:`MAX_YAML_NODES` before building
    any Python object from them."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _expanded_nodes(root, source)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe by packaged name (``cirevl``) or YAML path; ``overrides`` are deep-merged on top."""
    raw = str(name_or_path)
    path = Path(raw).expanduser()
    if not path.is_file():
        packaged = available_recipes()
        if raw in packaged:
            path = packaged[raw]
        else:
            raise ConfigError(
                f"recipe {raw!r} not found: no such file, and no packaged recipe of that name "
                f"(packaged: {', '.join(packaged) or 'none'}; list them with `agent-cir recipes`)"
            )
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise ConfigError(
                f"recipe {path} is {size:,} bytes, more than the {MAX_RECIPE_BYTES:,} a recipe may have; "
                "is it the right file?"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"recipe {path} cannot be read ({err}); check the file") from None
    try:
        data = load_yaml_bounded(text, str(path)) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"recipe {path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: the top level must be a mapping of keys, got {type(data).__name__}")
    if overrides:
        data = deep_merge(data, overrides)
    return recipe_from_dict(data, source=str(path))

