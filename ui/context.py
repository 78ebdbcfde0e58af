"""What every tab needs to know about this app session."""

from __future__ import annotations

from dataclasses import dataclass, field

from blk.caption.service import CaptionService
from blk.workspace import Workspace


@dataclass
class StudioContext:
    workspace: Workspace
    demo: bool  # tabs use the tiny random-weight models
    demo_reason: str  # why (the --demo flag, or no real model found)
    captioning: CaptionService = field(init=False)

    def __post_init__(self):
        self.captioning = CaptionService(self.workspace)

    def close(self) -> None:
        """Stop what the session started (the captioning server)."""
        self.captioning.close()
