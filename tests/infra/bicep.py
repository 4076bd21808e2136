"""Reading the Bicep templates through pycep's parse, for the infra tests.

pycep keeps Bicep's distinction between a reference (`cleanupRepositories`, a `BicepElement`)
and a string literal (`'*'`, a plain `str` still carrying Bicep's escapes), so the tests can
follow a value from an app setting back to the parameter it comes from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pycep import BicepParser
from pycep.models import BicepElement

INFRA = Path(__file__).resolve().parents[2] / "infra"

Template = dict[str, Any]


def bicep_files() -> list[Path]:
    """Every .bicep file under infra/, main.bicep first."""
    return sorted(INFRA.rglob("*.bicep"), key=lambda path: (path.name != "main.bicep", path))


def parse_all(paths: list[Path]) -> dict[Path, Template | Exception]:
    """Each file's parse, or the error that stopped it; one parser (one grammar compile)."""
    parser = BicepParser()
    parsed: dict[Path, Template | Exception] = {}
    for path in paths:
        try:
            parsed[path] = parser.parse(file_path=path)
        except Exception as error:  # noqa: BLE001 - each file's failure is reported by its own test
            parsed[path] = error
    return parsed


_ESCAPES = {"\\": "\\", "'": "'", "n": "\n", "r": "\r", "t": "\t", "$": "$"}


def literal(value: object) -> str:
    """The text of a Bicep string literal, its escapes (`\\\\`, `\\'`, `\\u{41}`...) resolved."""
    assert isinstance(value, str), f"not a string literal: {value!r}"
    assert not isinstance(value, BicepElement), f"a reference, not a literal: {value}"

    def unescape(match: re.Match[str]) -> str:
        escape = match.group(1)
        if escape.startswith("u{"):
            return chr(int(escape[2:-1], 16))
        return _ESCAPES[escape]

    return re.sub(r"\\(u\{[0-9A-Fa-f]+\}|[\\'nrt$])", unescape, value)


def is_reference(value: object, name: str | None = None) -> bool:
    """Whether `value` is a bare reference (to `name`, when given)."""
    return isinstance(value, BicepElement) and (name is None or str(value) == name)


def dotted(value: object) -> str:
    """`registry.properties.loginServer` for a chain of property accessors."""
    if isinstance(value, BicepElement):
        return str(value)
    operator = value["operator"] if isinstance(value, dict) else None
    assert operator, f"not a property path: {value!r}"
    assert operator["type"] == "property_accessor", f"not a property path: {value!r}"
    operands = operator["operands"]
    return f"{dotted(operands['operand_1'])}.{dotted(operands['operand_2'])}"


def function(value: object, name: str) -> dict[str, Any]:
    """The parameters of a call to the Bicep function `name` (pycep's snake_case name)."""
    assert isinstance(value, dict), f"not a call of {name}: {value!r}"
    assert "function" in value, f"not a call of {name}: {value!r}"
    call = value["function"]
    assert call["type"] == name, f"a call of {call['type']}, not {name}"
    parameters: dict[str, Any] = call["parameters"]
    return parameters


def body(declaration: dict[str, Any]) -> dict[str, Any]:
    """A resource's or module's properties, with or without an `if (...)` condition."""
    config: dict[str, Any] = declaration["config"]
    return config["config"] if "condition" in config else config


def condition(declaration: dict[str, Any]) -> object:
    """The `if (...)` condition of a resource or module, None when it is unconditional."""
    return declaration["config"].get("condition")


def variable(template: Template, name: str) -> Any:
    """The value expression of `var name = ...`."""
    return template["variables"][name]["value"]
