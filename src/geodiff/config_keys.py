"""Reading the validated config by dotted key, with an error that names a missing key."""

from __future__ import annotations

from typing import Any


def config_value(config: dict, key: str) -> Any:
    """The value of dotted `key` (``"train.lr"``) in `config`; a missing key raises naming it."""
    node: Any = config
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(key.split(".")[:i]) or "the top level"
            raise KeyError(f"config key {key!r} is missing ({part!r} not in {where}); pass the config validated "
                           "against workflow/schemas/config.schema.yaml, which fills in every default")
        node = node[part]
    return node
