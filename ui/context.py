"""What every tab needs to know about this app session."""

from __future__ import annotations

from dataclasses import dataclass

from blk.workspace import Workspace


@dataclass
class StudioContext:
    workspace: Workspace
    demo: bool  # tabs use the tiny random-weight models
    demo_reason: str  # why (the --demo flag, or no real model found)
