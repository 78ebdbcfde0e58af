"""Errors a user can cause, carried as one clear sentence.

The UI and the CLI show `str(error)` as is: no traceback, no jargon. Raise a
`UserError` (or a subclass) wherever the cause is the user's input or setup.
"""


class UserError(Exception):
    """A problem the user can fix; the message is the whole explanation."""


def require_file(path, what: str) -> None:
    """One sentence when `path` is not a file: it does not exist, or it is a folder where a file was wanted
    (which read "does not exist" though the folder was plainly there)."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give the file itself.")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist.")


def first_line(exc: Exception) -> str:
    """A library's refusal on one line. diffusers' "Incompatible keys detected:" lists the keys on the lines below
    it, so its first line alone ended the sentence on a colon: a few of the keys are named."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    first = lines[0].rstrip(":. ")
    if not lines[0].endswith(":") or len(lines) == 1:
        return first[:160]
    keys = [key.strip() for key in " ".join(lines[1:]).split(",") if key.strip()]
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"{first} ({', '.join(keys[:3])}{more})"


class ModelNotFound(UserError):
    """A named model has no weights on this machine."""


class IncompleteModel(ModelNotFound):
    """A model's folder is there but lacks a part its model_index.json lists; the message says which."""


class BadImage(UserError):
    """An image file cannot be used; the message says why."""


class UnsafePath(UserError):
    """A path points outside the workspace and the folders the user allowed."""


class CaptionConflict(UserError):
    """A caption changed on disk after the editor loaded it."""

    def __init__(self, image: str, current_text: str, your_text: str):
        super().__init__(
            f"The caption of {image} was changed by someone else while you edited it; "
            "both versions are kept in its history, pick one and save again."
        )
        self.image = image
        self.current_text = current_text
        self.your_text = your_text
