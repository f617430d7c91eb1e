"""The start-a-task form: a kind's parameters as form fields, read from its params_schema.

Each property of the kind's JSON schema becomes one field (a number, a text, a checkbox,
or a choice for an enum) labelled with its `title`, pre-filled with its default. Posted
text is turned back into the schema's types here; every rule beyond the type (ranges,
choices, unknown fields) is the domain's, reported by `TaskService.create` as it is to
the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.domain.schedules.rules import zone
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


#: How a `datetime-local` field (and a person) writes a time: no offset; the form's time zone field says where.
_LOCAL_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S")


def read_run_at(form: dict[str, str]) -> tuple[datetime | None, dict[str, str]]:
    """The start time of the form's `run_at` (a local time) in its `timezone` (an IANA name; default UTC).

    Empty: None (at once). A time with its own offset (RFC 3339) is taken as written. What is left
    (past, too far ahead) is the domain's rule, as for the API.
    """
    raw = form.get("run_at", "").strip()
    if not raw:
        return None, {}
    name = form.get("timezone", "").strip() or "UTC"
    tz = zone(name)
    if tz is None:
        return None, {"timezone": "Must be an IANA time zone name, e.g. UTC or Europe/Berlin."}
    for pattern in _LOCAL_FORMATS:
        try:
            return datetime.strptime(raw, pattern).replace(tzinfo=tz), {}
        except ValueError:
            continue
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None, {"run_at": "Must be a date and time, e.g. 2026-11-22T10:00."}
    return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=tz)), {}
