"""Errors a user can cause, carried as one clear sentence.

The UI and the CLI show `str(error)` as is: no traceback, no jargon. Raise a
`UserError` (or a subclass) wherever the cause is the user's input or setup.
"""


class UserError(Exception):
    """A problem the user can fix; the message is the whole explanation."""


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
