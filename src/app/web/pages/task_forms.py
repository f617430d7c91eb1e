"""The start-a-task form: a kind's parameters as form fields, read from its params_schema.

Each property of the kind's JSON schema becomes one field (a number, a text, a checkbox,
or a choice for an enum) labelled with its `title`, pre-filled with its default. Posted
text is turned back into the schema's types here; every rule beyond the type (ranges,
choices, unknown fields) is the domain's, reported by `TaskService.create` as it is to
the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.domain.tasks.kinds import Kind

INPUT_TYPES = {"integer": "number", "number": "number", "string": "text", "boolean": "checkbox"}


@dataclass(frozen=True)
class ParamField:
    name: str
    label: str
    input_type: str  # number, text, checkbox, select
    schema_type: str
    required: bool
    default: Any = None
    description: str | None = None
    choices: list[str] = field(default_factory=list)
    minimum: float | None = None
    maximum: float | None = None

    def shown(self, value: str | None) -> str:
        """The field's value as the form shows it: what was posted, else the default."""
        if value is not None:
            return value
        return "" if self.default is None else str(self.default)


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        found: dict[str, Any] = schema["$defs"][ref.removeprefix("#/$defs/")]
        return found
    return schema


def param_fields(kind: Kind[Any]) -> list[ParamField]:
    schema = _object_schema(kind.params_schema())
    required = set(schema.get("required", []))
    fields = []
    for name, prop in schema.get("properties", {}).items():
        options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
        inner = {**prop, **(options[0] if options else {})}
        nullable = len(options) < len(prop.get("anyOf", [prop]))
        title = inner.get("title") or name.replace("_", " ").capitalize()
        optional = name not in required and (nullable or "default" not in prop)
        choices = [str(c) for c in inner.get("enum", [])]
        schema_type = inner.get("type", "string")
        fields.append(
            ParamField(
                name=name,
                label=f"{title} (optional)" if optional else title,
                input_type="select" if choices else INPUT_TYPES.get(schema_type, "text"),
                schema_type=schema_type,
                required=name in required,
                default=prop.get("default", choices[0] if choices else None),
                description=inner.get("description"),
                choices=choices,
                minimum=inner.get("minimum"),
                maximum=inner.get("maximum"),
            )
        )
    return fields


def _number(text: str, whole: bool) -> int | float:
    return int(text) if whole else float(text)


def read_params(fields: list[ParamField], form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(params for the kind, field -> message for text that is not even of the field's type)."""
    params: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in fields:
        if f.schema_type == "boolean":
            params[f.name] = f.name in form
            continue
        text = form.get(f.name, "").strip()
        if not text:
            if f.required:
                errors[f.name] = "Required."
            continue  # the kind's default applies
        if f.schema_type in ("integer", "number") and not f.choices:
            try:
                value = _number(text, f.schema_type == "integer")
            except ValueError:
                errors[f.name] = "Must be a whole number." if f.schema_type == "integer" else "Must be a number."
                continue
            params[f.name] = value
        else:
            params[f.name] = text
    return params, errors
