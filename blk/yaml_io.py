"""Typed YAML files (presets, styles, run configs): read into a pydantic model, or one clear sentence."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from blk import atomic
from blk.errors import UserError

Model = TypeVar("Model", bound=BaseModel)


def load_model(path: str | Path, cls: type[Model]) -> Model:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return cls.model_validate(data)
    except UnicodeDecodeError:
        raise UserError(f"{path.name} is not UTF-8 text; save it as UTF-8 YAML.") from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror}).") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path.name} is not valid YAML ({str(exc).splitlines()[0]}).") from None
    except ValidationError as exc:
        raise UserError(f"{path.name}: {first_error(exc)}") from None


def first_error(exc: ValidationError, labels: Mapping[str, str] | None = None) -> str:
    """The first mistake as one sentence. Without `labels` it names the YAML path ("schedule.steps — Input should
    be …"): right for a file the user edits. A form passes `labels` (YAML path → the field's label) and gets
    the label's words ("Steps must be at least 1."); a path it does not label keeps the YAML wording."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    label = _label(loc, labels or {})
    if label is not None:
        return f"{label} {_must(first)}."
    path, _, rest = first["msg"].partition(" ")  # a check across fields names the field it is about first
    if labels and path in labels:
        return f"{labels[path]} {rest}."
    return f"{'.'.join(loc) or 'the file'} — {first['msg']}."


def _label(loc: list[str], labels: Mapping[str, str]) -> str | None:
    """The label of the path or of the nearest field above it (a list's item belongs to the list's field)."""
    for end in range(len(loc), 0, -1):
        if ".".join(loc[:end]) in labels:
            return labels[".".join(loc[:end])]
    return None


def _must(error: dict) -> str:
    """What a labelled field must be, from a pydantic error (its message, lower-cased, where no rule fits)."""
    bound = {key: f"{value:g}" if isinstance(value, float) else str(value)
             for key, value in (error.get("ctx") or {}).items()}
    kind = error["type"]
    if kind == "greater_than_equal":
        return f"must be at least {bound['ge']}"
    if kind == "greater_than":
        return f"must be more than {bound['gt']}"
    if kind == "less_than_equal":
        return f"must be at most {bound['le']}"
    if kind == "less_than":
        return f"must be less than {bound['lt']}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be a whole number"
    if kind in ("float_type", "float_parsing"):
        return "must be a number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be on or off"
    if kind == "literal_error":
        return f"must be one of {bound['expected']}"
    if kind == "missing":
        return "must be filled in"
    if kind == "too_short":
        return f"must have at least {bound['min_length']} value{'s' if bound['min_length'] != '1' else ''}"
    message = error["msg"].removeprefix("Value error, ").rstrip(".")
    return f"is not valid: {message[:1].lower()}{message[1:]}"


def save_model(model: BaseModel, path: str | Path) -> None:
    atomic.write_text(path, yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
