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


def load_model(path: str | Path, cls: type[Model],
               elsewhere: Mapping[type[BaseModel], str] | None = None) -> Model:
    """`path` read into `cls`. `elsewhere`: other schemas → what a file of theirs is for ("a training preset: run it
    with …"): a file that fits one of them, with a setting of its own that `cls` lacks, is said to be that, not
    listed as `cls`'s mistakes (a file of only the keys both share is `cls`'s, mistaken)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        try:
            return cls.model_validate(data)
        except ValidationError:
            for other, use in (elsewhere or {}).items():
                if not isinstance(data, dict) or not set(data) & (set(other.model_fields) - set(cls.model_fields)):
                    continue
                try:
                    other.model_validate(data)
                except ValidationError:
                    continue
                raise UserError(f"{path.name} is {use}") from None
            raise
    except UnicodeDecodeError:
        raise UserError(f"{path.name} is not UTF-8 text; save it as UTF-8 YAML.") from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror}).") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path.name} is not valid YAML ({str(exc).splitlines()[0]}).") from None
    except ValidationError as exc:
        raise UserError(f"{path.name}: {first_error(exc, model=cls)}") from None


def first_error(exc: ValidationError, labels: Mapping[str, str] | None = None,
                model: type[BaseModel] | None = None) -> str:
    """The first mistake as one sentence, and how many more there are. Without `labels` it names the YAML path
    ("schedule.steps must be at least 1."): right for a file the user edits; a misspelt key gets the nearest
    setting of `model` ("chekpoints is not a setting; did you mean checkpoints?"). A form passes `labels` (YAML
    path → the field's label) and gets the label's words ("Steps must be at least 1."); a path it does not
    label keeps the YAML wording."""
    errors = exc.errors()
    first = errors[0]
    more = f" ({len(errors) - 1} more mistake{'s' if len(errors) > 2 else ''} after it)" if len(errors) > 1 else ""
    loc = [str(p) for p in first["loc"]]
    label = _label(loc, labels or {})
    if label is not None:
        return f"{label} {_must(first)}{more}."
    path, _, rest = first["msg"].partition(" ")  # a check across fields names the field it is about first
    if labels and path in labels:
        return f"{labels[path]} {rest.rstrip('.')}{more}."
    if not loc:
        if first["type"] in ("model_type", "dict_type", "model_attributes_type"):
            return f"the file holds no settings (a list of `name: value` lines){more}."
        return f"{first['msg'].removeprefix('Value error, ').rstrip('.')}{more}."
    where = ".".join(loc)
    if first["type"] == "extra_forbidden":
        near = _nearest_setting(model, loc)
        return f"{where} is not a setting here" + (f" (did you mean {near}?)" if near else "") + f"{more}."
    return f"{where} {_must(first)}{more}."


def _nearest_setting(model: type[BaseModel] | None, loc: list[str]) -> str:
    """The setting beside `loc` whose name is nearest its last part (a typing slip), as a YAML path; "" if none."""
    import difflib

    for part in loc[:-1]:  # down through the sections (a list's index keeps the list's item type)
        if model is None or part.isdigit():
            continue
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        inner = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else \
            (inner[0] if inner else None)
    if model is None:
        return ""
    near = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return ".".join(loc[:-1] + near) if near else ""


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
