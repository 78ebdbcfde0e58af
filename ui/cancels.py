"""Cancel stops the job of the window it was clicked in, not another window's.

A tab's jobs (Sketch, Stencil, Review's grid, Upscale) shared one flag: with the studio open in two
windows, Cancel in one stopped the job running for the other (an hour of a mural upscale, say). Each
browser session now has its own flag, found by Gradio's session hash; Gradio hands the handlers the
request when their parameter is annotated `gr.Request`.

A job waits in Gradio's queue while another window's runs (one GPU, one job at a time). Its Cancel is
kept for it: the flag is cleared when the button is clicked (`arm`, run by `ui.busy` at the click, before
the queue), not when the job starts, which threw away a Cancel clicked while it waited.

A page reload starts a new session while the old session's job runs on (Gradio does not show it in the
new page). So a Cancel clicked where no job of its own runs stops the jobs whose windows have closed
(`session_ended`, the app's unload handler): the job the artist started before reloading, never the job
of a window still open. A session's flag goes when it has ended and runs no job."""

from __future__ import annotations

import threading
import weakref

import gradio as gr

_EVERY = weakref.WeakSet()  # every tab's SessionCancels, told when a session ends


def _key(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or ""  # a call without a session (a script) shares one


class SessionCancels:
    """One cancel flag per browser session, for one tab's job and its Cancel button."""

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}
        self._running: set[str] = set()  # sessions whose job runs now
        self._waiting: set[str] = set()  # sessions whose job was clicked and waits to start
        self._ended: set[str] = set()  # of those, sessions whose window has closed
        self._lock = threading.Lock()
        _EVERY.add(self)

    def flag(self, request: gr.Request | None) -> threading.Event:
        """The session's flag."""
        with self._lock:
            return self._flags.setdefault(_key(request), threading.Event())

    def cancel(self, request: gr.Request) -> None:
        """The Cancel button's handler: the clicking session's job, or where it runs none, the jobs of closed
        windows."""
        key = _key(request)
        with self._lock:
            orphans = self._running & self._ended
            if key in self._running or not orphans:
                targets = [key]
            else:  # the jobs of closed windows; and this window's waiting one (it waits on them, one GPU)
                targets = sorted(orphans) + ([key] if key in self._waiting else [])
            for target in targets:
                self._flags.setdefault(target, threading.Event()).set()

    def arm(self, request: gr.Request | None) -> None:
        """At the click, before the job queues: a Cancel from now on is this job's."""
        key = _key(request)
        with self._lock:
            self._flags.setdefault(key, threading.Event()).clear()
            self._waiting.add(key)

    def settle(self, request: gr.Request | None) -> None:
        """After the click's job, however it ended: one that never started (an input Gradio could not read)
        no longer counts as waiting."""
        with self._lock:
            self._waiting.discard(_key(request))

    def job(self, fn):
        """`fn(cancel, *inputs, progress=…)` as an event handler given the clicking session's flag. A job not
        armed by its click (called through the API) starts with its flag cleared: an old Cancel is not its."""
        def handler(request: gr.Request, *inputs, progress=gr.Progress()):
            key, flag = _key(request), self.flag(request)
            with self._lock:
                if key not in self._waiting:
                    flag.clear()
                self._waiting.discard(key)
                self._running.add(key)
            try:
                return fn(flag, *inputs, progress=progress)
            finally:
                with self._lock:
                    self._running.discard(key)
                    if key in self._ended:
                        self._ended.discard(key)
                        self._flags.pop(key, None)

        handler.cancels = self  # `ui.busy.click_while_busy` arms it at the click
        return handler

    def _end(self, key: str) -> None:
        with self._lock:
            self._waiting.discard(key)
            if key in self._running:
                self._ended.add(key)
            else:
                self._flags.pop(key, None)


def session_ended(request: gr.Request) -> None:
    """The app's unload handler (a window closed or reloaded): its jobs become cancellable from other windows."""
    for cancels in list(_EVERY):
        cancels._end(_key(request))
