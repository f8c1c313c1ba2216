"""A training config file's YAML: one document of several (``--doc NAME``) and ``--set
KEY=VALUE`` overrides on top of it, before ``aiprod.training.config`` validates it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from aiprod.core.errors import ConfigError


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` settings on top of a config: a dotted path (list items by index,
    ``phases.0.steps=3``) and a YAML value (``'phases.0.buckets=[[64, 32, 9]]'``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set phases.0.steps=3")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: {text!r} is not a YAML value ({exc})") from exc
        node: Any = raw
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {part!r} is not an item of a {len(node)}-list")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is not a mapping or list")
    return raw


def pick_document(path: Path, docs: list[Any], name: str | None) -> Any:
    """One document of a YAML file: the first, or the one whose ``name`` is ``name``."""
    if name is None:
        return docs[0] if docs else None
    names = [d.get("name") for d in docs if isinstance(d, dict)]
    for d in docs:
        if isinstance(d, dict) and d.get("name") == name:
            return d
    raise ConfigError(f"{path}: no document named {name!r}; it has: {', '.join(map(str, names))}")
