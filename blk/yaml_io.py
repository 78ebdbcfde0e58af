"""Typed YAML files (presets, styles, run configs): read into a pydantic model, or one clear sentence."""

from __future__ import annotations

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


def first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the file"
    return f"{where} — {first['msg']}."


def save_model(model: BaseModel, path: str | Path) -> None:
    atomic.write_text(path, yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
