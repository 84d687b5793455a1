"""A persona's LLM tools: the shape stored in `Persona.tools`, checked before it is saved.

Each tool is `{"type": "client"|"server", "name", "description", "parameters"}` plus an
optional `"timeoutSeconds"`. `parameters` is the JSON schema of the arguments, an object
schema as OpenAI's function calling takes it. Client tools are answered by the browser (the
Anam SDK's `registerToolCallHandler`), server tools by the app through the agent API.
"""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

TOOL_TYPES = ("client", "server")
# OpenAI's rule for function names.
TOOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# More tools than this dilute the model's choices and bloat every request.
MAX_TOOLS = 32
# OpenAI truncates longer function descriptions (characters).
MAX_DESCRIPTION_CHARACTERS = 1024
# Bounds of a tool's own wait for its result (seconds): a spoken conversation cannot hold
# its breath for minutes.
MIN_TIMEOUT_SECONDS = 1.0
MAX_TIMEOUT_SECONDS = 120.0
TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "timeoutSeconds"})
REQUIRED_TOOL_KEYS = ("type", "name", "description")
# What the LLM is given of `parameters` (pipecat's FunctionSchema keeps properties and
# required); anything else at the top level would be dropped silently, so it is refused.
PARAMETER_KEYS = frozenset({"type", "properties", "required", "additionalProperties", "description"})
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "required": []}


def tools_problems(value: Any) -> list[str]:
    """Every reason `value` is not a valid tool list, each naming where (`tools[1].name: ...`)."""
    if not isinstance(value, list):
        return ["must be a list of tools: [{type, name, description, parameters}]"]
    if len(value) > MAX_TOOLS:
        return [f"at most {MAX_TOOLS} tools, got {len(value)}"]
    problems: list[str] = []
    seen: set[str] = set()
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            problems.append(f"{where}: must be an object {{type, name, description, parameters}}")
            continue
        unknown = sorted(set(tool) - TOOL_KEYS)
        if unknown:
            problems.append(
                f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOOL_KEYS))}"
            )
        missing = [key for key in REQUIRED_TOOL_KEYS if key not in tool]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
        kind = tool.get("type")
        if "type" in tool and kind not in TOOL_TYPES:
            problems.append(f"{where}.type: must be 'client' or 'server', not {kind!r}")
        name = tool.get("name")
        if "name" in tool:
            if not isinstance(name, str) or not TOOL_NAME_PATTERN.match(name):
                problems.append(f"{where}.name: 1 to 64 letters, digits, '_' or '-', got {name!r}")
            elif name in seen:
                problems.append(f"{where}.name: {name!r} is used by another tool")
            else:
                seen.add(name)
        description = tool.get("description")
        if "description" in tool and (not isinstance(description, str) or not description.strip()):
            problems.append(f"{where}.description: must say what the tool does (a non-empty string)")
        elif isinstance(description, str) and len(description) > MAX_DESCRIPTION_CHARACTERS:
            problems.append(f"{where}.description: at most {MAX_DESCRIPTION_CHARACTERS} characters")
        if "parameters" in tool:
            problems.extend(
                f"{where}.parameters{problem}" for problem in _parameters_problems(tool["parameters"])
            )
        if "timeoutSeconds" in tool:
            timeout = tool["timeoutSeconds"]
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, int | float)
                or not MIN_TIMEOUT_SECONDS <= timeout <= MAX_TIMEOUT_SECONDS
            ):
                problems.append(
                    f"{where}.timeoutSeconds: a number of seconds from {MIN_TIMEOUT_SECONDS:g} "
                    f"to {MAX_TIMEOUT_SECONDS:g}, got {timeout!r}"
                )
    return problems


def _parameters_problems(parameters: Any) -> list[str]:
    """Problems of one tool's `parameters`, each starting with a path suffix or ': '."""
    if not isinstance(parameters, dict):
        return [": must be a JSON schema object like {type: 'object', properties: {...}}"]
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as error:
        path = "".join(f"[{part!r}]" if isinstance(part, int) else f".{part}" for part in error.path)
        return [f"{path}: not a valid JSON schema: {error.message}"]
    problems: list[str] = []
    if parameters.get("type", "object") != "object":
        problems.append(f".type: must be 'object' (the arguments are named), not {parameters['type']!r}")
    unknown = sorted(set(parameters) - PARAMETER_KEYS)
    if unknown:
        problems.append(f": unsupported key(s) {', '.join(unknown)}; use {', '.join(sorted(PARAMETER_KEYS))}")
    properties = parameters.get("properties", {})
    if not isinstance(properties, dict):
        return [*problems, ".properties: must be an object of argument schemas"]
    for argument, schema in properties.items():
        if not isinstance(schema, dict):
            problems.append(f".properties.{argument}: must be a schema object, e.g. {{type: 'string'}}")
    required = parameters.get("required", [])
    undefined = [argument for argument in required if argument not in properties]
    if undefined:
        problems.append(f".required: {', '.join(undefined)} not among the properties")
    return problems


def tools_normalize(value: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A valid tool list with defaults filled in (an empty object schema for no parameters)."""
    normalized = []
    for tool in value:
        parameters = dict(tool.get("parameters") or EMPTY_PARAMETERS)
        parameters.setdefault("type", "object")
        parameters.setdefault("properties", {})
        normalized.append({**tool, "description": tool["description"].strip(), "parameters": parameters})
    return normalized
