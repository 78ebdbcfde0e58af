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


class ModelNotFound(UserError):
    """A named model has no weights on this machine."""


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
