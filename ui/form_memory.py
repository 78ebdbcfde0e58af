"""Form memory: a tab's form kept in this browser's localStorage (gr.BrowserState) and put back on reload.

Its own module because it belongs to no one tab: Sketch, Stencil and Train remember their forms with it, and a
tab that imported it from another tab would load that tab's code (and its imports) just to remember fields.
What is kept never reaches the server's disk or leaves the browser; what comes back is checked against the
form as it is now (types, choices, LoRA files still there and allowed), so a stale or edited value only
leaves the field at its default.
"""

from __future__ import annotations

import hashlib

import gradio as gr

from ui import lora_stack
from ui.context import StudioContext


def remembered(values: dict, previous=None) -> dict:
    """What the browser keeps of a form: its values over the previous ones, less the seed while "Random seed" is
    on. A None (a field the page has not drawn yet, or left empty) keeps the previous value."""
    kept = {**(previous if isinstance(previous, dict) else {}),
            **{name: value for name, value in values.items() if value is not None}}
    if kept.get("random_seed"):
        kept.pop("seed", None)
    return kept


def _fits(component, value) -> bool:
    """Whether a remembered value can go back into the component as it is now (its type, one of its choices)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(component, gr.Checkbox):
        return isinstance(value, bool)
    if isinstance(component, gr.Slider):
        return number and component.minimum <= value <= component.maximum
    if isinstance(component, gr.Number):  # within its bounds now (a GPUs count kept from a machine with more)
        return number and (component.minimum is None or value >= component.minimum) and \
            (component.maximum is None or value <= component.maximum)
    if isinstance(component, gr.Dropdown) and component.allow_custom_value:
        return isinstance(value, str)
    if isinstance(component, (gr.Dropdown, gr.Radio)):
        return any(value == choice for _, choice in component.choices)
    return isinstance(component, gr.Textbox) and isinstance(value, str)


def restored(context: StudioContext, saved, fields: dict) -> list:
    """One update per field from what the browser kept: the value, or no change where nothing (valid) was kept.
    The LoRA list keeps only files that still exist inside the allowed folders."""
    saved = saved if isinstance(saved, dict) else {}
    updates = []
    for name, component in fields.items():
        if name not in saved:
            updates.append(gr.update())
        elif name == "loras":
            updates.append(lora_stack.restorable(context, saved[name]))
        else:
            updates.append(saved[name] if _fits(component, saved[name]) else gr.update())
    return updates


def remember_form(context: StudioContext, storage_key: str, fields: dict) -> None:
    """Keep a form's last values in this browser's localStorage (never on the server, never sent elsewhere).

    `fields` maps a name to its component; "seed" is kept only while "random_seed" is off, "loras" is a
    lora_stack list. The stored value is read when the tab is first drawn (Gradio draws tabs when opened); that
    restores the form once per page, and only then do changes save, so that the defaults of a form not yet
    restored never overwrite what was kept.
    """
    # Gradio encrypts the stored value with `secret`, which it sends to the page anyway: not a safeguard, but a
    # fixed one per workspace keeps the memory across app restarts (and apart between workspaces).
    secret = hashlib.sha256(str(context.workspace.root).encode()).hexdigest()[:32]
    stored = gr.BrowserState({}, storage_key=storage_key, secret=secret)
    done = gr.State(False)  # restored on this page
    names, components = list(fields), list(fields.values())

    def save(is_restored, previous, *values):
        return remembered(dict(zip(names, values)), previous) if is_restored else gr.update()

    def restore(is_restored, saved):
        return [gr.update()] * len(components) + [True] if is_restored else restored(context, saved, fields) + [True]

    gr.on([component.change for component in components], save, inputs=[done, stored, *components], outputs=stored,
          queue=False, show_progress="hidden", trigger_mode="always_last", api_visibility="private")
    # through the queue: only there does a new LoRA list (a gr.State) redraw its rows
    stored.change(restore, inputs=[done, stored], outputs=[*components, done], show_progress="hidden",
                  api_visibility="private")
