"""A long job's button says it is working, and takes no second click, until the job ends.

Gradio runs one event of a button at a time and drops a click made while it runs, so a second
"Generate" during a job did nothing and read as a broken button. Now the button itself says what
is happening ("Generating…", greyed) and comes back when the job ends, however it ends."""

from __future__ import annotations

import gradio as gr


def click_while_busy(button: gr.Button, busy_label: str, fn, **event_args):
    """`button.click(fn, **event_args)`, with the button greyed and relabelled while `fn` runs.

    A job of `SessionCancels.job` is armed at the click (`ui.cancels`): a Cancel clicked while it waits in
    the queue stops it. Returns the job's event, so callers can chain on it as on a plain click."""
    idle_label = button.value
    cancels = getattr(fn, "cancels", None)

    def grey(request: gr.Request):
        if cancels is not None:
            cancels.arm(request)
        return gr.Button(value=busy_label, interactive=False)

    greyed = button.click(grey, outputs=button, queue=False, show_progress="hidden")
    job = greyed.then(fn, **event_args)

    def idle(request: gr.Request):
        if cancels is not None:
            cancels.settle(request)
        return gr.Button(value=idle_label, interactive=True)

    # after the job however it ended: `.then` follows one that returned (finished, cancelled, a sentence),
    # `.failure` one that raised or whose inputs could not be read (a damaged upload); Gradio runs only one
    job.then(idle, outputs=button, queue=False, show_progress="hidden")
    job.failure(idle, outputs=button, queue=False, show_progress="hidden")
    return job
