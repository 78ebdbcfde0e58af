"""Models & Settings: which models are on this machine, the workspace, the devices."""

from __future__ import annotations

import gradio as gr

from ui.context import StudioContext

COLUMNS = ["name", "family", "status", "size", "where", "about"]


def models_table(context: StudioContext) -> list[list[str]]:
    """Every known model, found or missing: base models, then upscalers, LayerDiffuse, BiRefNet, captioners."""
    from blk.models.registry import human_size, list_models, list_support_models

    return [[r.name, r.family, r.status, human_size(r.size_bytes), r.location, r.problem or r.description]
            for r in list_models(context.workspace) + list_support_models(context.workspace)]


def intro_text(context: StudioContext) -> str:
    """Where weights come from, with the fetch command for this environment and workspace."""
    from blk.commands import blk_command

    return (f"Weights load from this machine only. Put a diffusers folder at `{context.workspace.models}/NAME`, "
            f"keep models in your Hugging Face cache, or download one explicitly with "
            f"`{blk_command(context.workspace, 'models', 'fetch', 'NAME')}` in the studio's folder "
            "(the only command that uses the network).")


def devices_text(context: StudioContext) -> str:
    from blk.errors import UserError
    from blk.models.device import available_devices, describe, pick_device

    lines = [f"- {describe(d)}" for d in available_devices()]
    workspace = context.workspace
    try:
        device = workspace.settings.device
        where = f"in `{workspace.settings_path}`" if workspace.settings_path.is_file() else \
            f"the default: `{workspace.settings_path}` does not exist yet"
        chosen = f"In use: **{pick_device(device)}** (`device: {device}`, {where})."
    except UserError as exc:
        chosen = f"**{exc}**"
    return "Devices, best first:\n" + "\n".join(lines) + "\n\n" + chosen


def build(context: StudioContext) -> None:
    gr.Markdown(intro_text(context))
    table = gr.Dataframe(value=lambda: models_table(context), headers=COLUMNS, interactive=False,
                         label="Models", wrap=True, column_widths=["27%", "11%", "10%", "7%", "24%", "21%"],
                         elem_id="blk-models",
                         max_height=3000)  # every row in view, also when a narrow window wraps them
    refresh = gr.Button("Refresh", size="sm")
    gr.Markdown(f"Workspace: `{context.workspace.root}`  \n"
                f"Folders allowed besides it: {', '.join(context.workspace.settings.allowed_folders) or 'none'}")
    devices = gr.Markdown("Detecting devices…", elem_id="blk-devices")
    detect = gr.Button("Detect devices", size="sm")
    refresh.click(lambda: models_table(context), outputs=table, api_name="models_list")
    detect.click(lambda: devices_text(context), outputs=devices, api_name="devices")
    gr.on(None, lambda: devices_text(context), outputs=devices, show_progress="hidden")  # on each page load
