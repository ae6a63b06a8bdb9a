"""The stack as compose.yaml and overlay files declare it, merged the way compose merges
mappings (a later file's keys over an earlier one's, recursively): what the sizing rules read,
with no Docker Compose. tests/integration/test_configuration.py checks the same files as
`docker compose config` reads them."""

import yaml

from stackctl.stack import ROOT


def merged(base: dict, over: dict) -> dict:
    result = dict(base)
    for key, value in over.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) \
            else value
    return result


def declared(*files: str) -> dict:
    """compose.yaml with these files (relative to the checkout) layered over it."""
    model = {}
    for name in ("compose.yaml", *files):
        model = merged(model, yaml.safe_load((ROOT / name).read_text()))
    return model
