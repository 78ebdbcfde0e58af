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
    _sketcher: object = field(init=False, default=None)
    _stenciler: object = field(init=False, default=None)

    def __post_init__(self):
        self.captioning = CaptionService(self.workspace)

    @property
    def sketcher(self):
        """One generation pipeline for the session, shared by Sketch and Review (loaded on first use)."""
        if self._sketcher is None:
            from blk.generate.sketch import Sketcher

            self._sketcher = Sketcher(self.workspace)
        return self._sketcher

    @property
    def stenciler(self):
        """Transparent generation on the same loaded pipeline as Sketch."""
        if self._stenciler is None:
            from blk.stencil.generate import Stenciler

            self._stenciler = Stenciler(self.sketcher)
        return self._stenciler

    def default_model(self) -> str:
        from blk.models.registry import default_model

        return "tiny-flux" if self.demo else default_model(self.workspace)[0]

    def base_models(self) -> list[str]:
        """The base models Train and Review offer, read afresh at each call (a model put in workspace/models or
        registered in settings since appears): the tiny ones in demo mode, else the Flux and SDXL models found on
        this machine, known or registered (the tiny ones when none is). The forms take any other name or path
        typed by hand; the registry refuses a wrong one with its own sentence."""
        from blk.models.registry import FAMILIES, KNOWN_MODELS, list_models

        found = [row.name for row in list_models(self.workspace) if row.found and row.family in FAMILIES]
        tiny = [name for name in found if name in KNOWN_MODELS and KNOWN_MODELS[name].tiny]
        real = [name for name in found if name not in tiny]
        return tiny if self.demo or not real else real

    def release_gpu(self, for_what: str) -> str:
        """Let go of the model Sketch, Review, Stencil and Upscale share when it sits on a GPU, before another
        process needs that GPU (the captioning server, a training run, its probe): FLUX alone holds about 24 GB,
        and they failed beside it. A sentence saying so, or "" when nothing was held there. Not while one of
        them generates: its run keeps the model alive whatever the cache drops."""
        from blk.stencil.matting import release_sessions

        held = self._sketcher.cache.held() if self._sketcher is not None else None
        if held is None or not held[1].startswith("cuda"):
            return ""
        if not self._sketcher.lock.acquire(blocking=False):
            return (f"The {held[0]} model stays on {held[1]} while an image is being made; {for_what} shares "
                    "the GPU with it until it ends.")
        try:
            if self._stenciler is not None:
                self._stenciler.release()  # first: the cache's clearing then gives their memory back too
            release_sessions()
            self._sketcher.cache.clear()
        finally:
            self._sketcher.lock.release()
        return (f"The {held[0]} model that Sketch, Review, Stencil and Upscale share was let go from {held[1]}, "
                f"to leave the GPU to {for_what}; the next image loads it again.")

    def close(self) -> None:
        """Stop what the session started (the captioning server) and free the loaded pipeline."""
        self.captioning.close()
        if self._sketcher is not None:
            self._sketcher.cache.clear()
