"""configs/llmitm.schema.json: the shipped JSON Schema is the one the code generates."""

from __future__ import annotations

import json

import pytest

from addons.config.schema import json_schema
from tests.unit.conftest import CONFIGS

SCHEMA_FILE = CONFIGS / "llmitm.schema.json"
REGENERATE = (
    '.venv/bin/python -c "import json; from addons.config.schema import json_schema; '
    "open('configs/llmitm.schema.json', 'w').write(json.dumps(json_schema(), indent=2, sort_keys=True) + '\\n')\""
    "\n(or, with the package installed: llmitm schema > configs/llmitm.schema.json)"
)


def test_shipped_schema_is_up_to_date() -> None:
    assert SCHEMA_FILE.is_file(), (
        f"{SCHEMA_FILE} is missing; create it from the repo root with:\n{REGENERATE}"
    )
    shipped = json.loads(SCHEMA_FILE.read_text())
    assert shipped == json_schema(), (
        f"{SCHEMA_FILE.name} is out of date with addons/config; regenerate it from the repo root with:\n"
        f"{REGENERATE}"
    )


def test_shipped_schema_is_formatted_as_generated() -> None:
    assert SCHEMA_FILE.read_text() == json.dumps(json_schema(), indent=2, sort_keys=True) + "\n", (
        f"regenerate with:\n{REGENERATE}"
    )


def test_schema_describes_the_config_format() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False  # unknown keys are errors in editors too
    assert {"_format_version", "services", "routes", "plugins"} <= set(schema["properties"])
    text = json.dumps(schema)
    for plugin in ("ai-proxy", "file-log"):
        assert f'"{plugin}"' in text


def test_example_configs_validate_against_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")  # not a project dependency: the one allowed skip
    import yaml

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    examples = sorted(CONFIGS.glob("*.yaml"))
    assert examples
    problems = []
    for path in examples:
        data = yaml.safe_load(path.read_text())
        for e in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path))):
            problems.append(f"{path.name}: {'.'.join(map(str, e.path))}: {e.message}")
    assert not problems, "\n".join(problems)
