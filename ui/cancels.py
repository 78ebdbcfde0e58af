"""Cancel stops the job of the window it was clicked in, not another window's.

A tab's jobs (Sketch, Stencil, Review's grid, Upscale) shared one flag: with the studio open in two
windows, Cancel in one stopped the job running for the other (an hour of a mural upscale, say). Each
browser session now has its own flag, found by Gradio's session hash; Gradio hands the handler the
request when its parameter is annotated `gr.Request`.

The flags stay for the app's life: a few hundred bytes per window ever opened on a local app."""

from __future__ import annotations

import threading

import gradio as gr


class SessionCancels:
    """One cancel flag per browser session, for one tab's job and its Cancel button."""

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def flag(self, request: gr.Request | None) -> threading.Event:
        """The session's flag (a call without a session, e.g. from a script, shares one)."""
        key = getattr(request, "session_hash", None) or ""
        with self._lock:
            return self._flags.setdefault(key, threading.Event())

    def cancel(self, request: gr.Request) -> None:
        """The Cancel button's handler: sets the flag of the session that clicked."""
        self.flag(request).set()

    def job(self, fn):
        """`fn(cancel, *inputs, progress=…)` as an event handler given the clicking session's flag."""
        def handler(request: gr.Request, *inputs, progress=gr.Progress()):
            return fn(self.flag(request), *inputs, progress=progress)

        return handler
