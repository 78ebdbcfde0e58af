"""The curators' grid: edit captions in place, approve, restore, bulk edit with preview and undo; the Words panel.

Each shown row remembers the hash its caption had when read; a save that
started from an older version is refused as a conflict and both texts are
kept in the history (the engine's caption store does this). Rows, the large
view's caption and a bulk preview also remember their dataset: a save or an
apply writes into the dataset the text came from, whatever the dropdown shows
now, and choosing another dataset clears them.

The Words panel (closed at first) counts the terms of the dataset's captions on disk
(`blk.data.word_stats`); it is counted again when opened and, while open, after everything
that refreshes the grid (a save, a bulk apply or undo, a caption batch, Show). Clicking a term
filters the grid to the captions that contain it (`GridQuery.term`, the same rule as the counts).
"""

from __future__ import annotations

import gradio as gr

from ui.context import StudioContext
from blk.timespan import moment
from ui.tabs.caption.captioning import examples_rows

STATUSES = ["all", "none", "machine", "edited", "approved", ("drifting from the examples", "drifting")]
SORTS = ["name", "status", "tokens", "length"]
HEADERS = ["image", "caption", "status", "tokens", "over budget"]
TOP_HEADERS = ["word or tag", "kind", "captions", "share"]
RARE_HEADERS = ["word or tag", "kind", "image"]
TOP_TERMS = 50
RARE_SHOWN = 200
MISSING_NAMED = 10
WORD_RULES = (
    "A caption reads as **tags** when it has two or more comma-separated parts and at least 3 in 4 of them "
    "are three words or fewer: whole tags are counted. Otherwise it reads as **prose**: words are counted "
    "(case ignored, common English words such as *a, the, with* left out), and two-word phrases that at least "
    "two captions share. A caption counts once per term. Click a term to show only the captions that contain it."
)


def use_token_model(context: StudioContext, name: str | None) -> None:
    """Count tokens with this model's tokenizers from now on (the grid and the check)."""
    context.captioning.token_model = name or None


def demo_tokens_note(model_name: str) -> str:
    """The tiny demo models' tokenizers count nearly one token per character: said, so that a curator does
    not shorten captions a real model's tokenizers would count as well within budget."""
    from blk.models.registry import KNOWN_MODELS

    known = KNOWN_MODELS.get(model_name)
    return (f", counted by {model_name}'s demo tokenizers (about one token a character; a real model's "
            "count far fewer)") if known and known.tiny else ""


def style_trigger_of(context: StudioContext, name) -> str:
    """The dataset's trigger word (its caption style's), to fill Bulk edit's box: "Preview add trigger" is then one
    click for the captions the grid's summary lists without it."""
    from blk.data.trigger import style_trigger
    from blk.errors import UserError

    try:
        return style_trigger(context.captioning.dataset(name)) if name else ""
    except UserError:
        return ""


def load_page(context: StudioContext, name, status, text, regex, sort, descending, page, page_size, term=None):
    """Rows for the table, the rows' base hashes (state), and a summary line. `term`: the Words panel's filter."""
    from blk.data.grid import GridQuery, query_grid
    from blk.errors import UserError

    try:
        folder = context.captioning.dataset(name)
        result = query_grid(folder, GridQuery(status=status, text=text or "", regex=bool(regex), sort=sort,
                                              descending=bool(descending), page=int(page or 1),
                                              page_size=int(page_size), term=term or ""),
                            context.captioning.token_counter())
    except UserError as exc:
        return [], [], f"**{exc}**", 1
    table = [[r.image, r.caption, f"{r.status}: {r.drift}" if r.drift else r.status,
              " · ".join(str(n) for n in r.tokens), "⚠ over" if r.over_budget else ""] for r in result.rows]
    state = [{"image": r.image, "caption": r.caption, "hash": r.hash, "dataset": name} for r in result.rows]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    # "46 · 45", one count per text encoder in the summary's order ("46 / 45" read as 46 of 45 allowed)
    labels = " · ".join(context.captioning.token_counter().labels)
    only = f" with “{term}”" if term else ""
    summary = (f"Page {result.page} of {result.pages} — {result.total} matching{only}. Dataset: {counts}. "
               f"Tokens per text encoder: {labels}{demo_tokens_note(context.captioning.token_model_name())}.")
    if result.note:
        summary += f" **{result.note}**"
    return table, state, summary, result.page


THUMBNAIL_SIZE = 128  # px, the longer side of the page's thumbnails (cached in the dataset's .blk/thumbs/)
THUMBNAIL_BATCH = 10  # thumbnails shown at a time while a page's are being made


def page_thumbnails(context: StudioContext, rows):
    """Thumbnails of the rows the grid shows, in its order: the artist sees the images they are captioning
    without opening each one. A file that cannot be read shows no thumbnail (its row says why in Check).
    A generator: a page of large scans not seen before (about a second each) appears batch by batch."""
    from blk.data.scan import scan
    from blk.data.thumbnails import thumbnails
    from blk.errors import UserError

    try:
        folder = context.captioning.dataset(rows[0]["dataset"]) if rows else None
    except UserError:
        folder = None
    if folder is None:
        yield []
        return
    records = {record.rel: record for record in scan(folder)}
    wanted = [records[row["image"]] for row in rows if row["image"] in records and records[row["image"]].ok]
    shown = []
    for made, (record, path) in enumerate(thumbnails(folder, wanted, THUMBNAIL_SIZE), start=1):
        if path is not None:
            shown.append((str(path), record.rel))
        if made % THUMBNAIL_BATCH == 0 and made < len(wanted):
            yield list(shown)
    yield shown


def thumbnail_image(rows, selected) -> str | None:
    """The image of a thumbnail clicked, read from its caption (the image's name: an unreadable file has no
    thumbnail, so positions in the strip and rows of the grid may differ)."""
    caption = selected.get("caption") if isinstance(selected, dict) else None
    return caption if caption and any(row["image"] == caption for row in rows or []) else None


def word_panel(context: StudioContext, name):
    """The Words panel of a dataset: a summary, the most frequent terms, the rare ones, and the terms to pick."""
    from blk.data.word_stats import dataset_word_stats
    from blk.errors import UserError

    if not name:
        return "Choose a dataset to see how its captions use words.", [], [], gr.Dropdown(choices=[])
    try:
        stats = dataset_word_stats(context.captioning.dataset(name), top=TOP_TERMS)
    except UserError as exc:
        return f"**{exc}**", [], [], gr.Dropdown(choices=[])
    missing = len(stats.missing)
    lines = [f"**{stats.captioned} caption(s)**: {stats.tag_style} read as tags, {stats.prose} as prose; "
             f"{missing} image(s) without a caption{_named(stats.missing)}. "
             f"{stats.distinct} different words, tags and phrases; {len(stats.rare)} in one caption only."]
    if stats.trigger:
        line = (f"Trigger word “{stats.trigger}” (the caption style's): in {stats.trigger_covered} of "
                f"{stats.captioned} captions")
        lines.append(line + (f"; without it: {_named(stats.trigger_missing, '')}." if stats.trigger_missing else "."))
    else:
        lines.append("The caption style has no trigger word.")
    top = [[t.term, t.kind, t.captions, _share(t.share)] for t in stats.top]
    rare = [[t.term, t.kind, t.image] for t in stats.rare[:RARE_SHOWN]]
    if len(stats.rare) > RARE_SHOWN:
        lines.append(f"The first {RARE_SHOWN} of {len(stats.rare)} rare terms are shown (alphabetical); "
                     "type any term below to filter by it.")
    terms = list(dict.fromkeys([row[0] for row in top] + [row[0] for row in rare]))
    return "\n\n".join(lines), top, rare, gr.Dropdown(choices=terms)


def refresh_words(context: StudioContext, is_open, name):
    """The Words panel again after the captions may have changed; nothing is counted while it is closed."""
    if not is_open:
        return gr.update(), gr.update(), gr.update(), gr.update()
    return word_panel(context, name)


def filter_by_word(context: StudioContext, term, name, status, text, regex, sort, descending, page, page_size):
    """The grid's first page of captions containing `term` (None or empty: all), the filter kept, and the picker."""
    from blk.data.word_stats import normalize_term

    term = normalize_term(term) or None
    return (*load_page(context, name, status, text, regex, sort, descending, 1, page_size, term), term,
            gr.update(value=term))


def picked_term(evt: gr.SelectData):
    """The term of the row clicked in a Words table."""
    row = evt.row_value if isinstance(evt.row_value, (list, tuple)) else None
    return str(row[0]) if row else None


def _share(share: float) -> str:
    return f"{share:.0%}" if share >= 0.01 or share == 0 else "<1%"


def _named(images: list[str], lead: str = ": ") -> str:
    if not images:
        return ""
    more = f" and {len(images) - MISSING_NAMED} more" if len(images) > MISSING_NAMED else ""
    return lead + ", ".join(images[:MISSING_NAMED]) + more


def save_edits(context: StudioContext, name, table, state) -> str:
    """Save every row whose caption was changed in the table, into the dataset the rows were read from."""
    from blk.data.captions import CaptionStore
    from blk.errors import CaptionConflict, UserError

    origin = next((before["dataset"] for before in state or [] if before.get("dataset")), name)
    try:
        store = CaptionStore(context.captioning.dataset(origin))
    except UserError as exc:
        return f"**{exc}**"
    rows = table.values.tolist() if hasattr(table, "values") else (table or [])
    saved, conflicts, failed = [], [], []
    for row, before in zip(rows, state or []):
        if row[0] != before["image"] or str(row[1]) == before["caption"]:
            continue
        try:
            store.save(before["image"], str(row[1]), before["hash"], source="human")
            saved.append(before["image"])
        except CaptionConflict as exc:
            conflicts.append(f"- **{exc.image}** — on disk: “{exc.current_text}”; yours: “{exc.your_text}”")
        except UserError as exc:  # e.g. a full disk: this row is not saved, the others are still tried
            failed.append(f"- **{exc}**")
    note = f"Saved {len(saved)} caption(s)." if saved else "No caption was changed."
    if conflicts:
        note += "\n\n**Changed by someone else meanwhile** (both versions are in the history):\n" + "\n".join(conflicts)
    if failed:
        note += "\n\n**Not saved** (your edit is still in the table):\n" + "\n".join(failed)
    return note


def preview_version(context: StudioContext, editing, version_id) -> str:
    """The whole text of the History version chosen, before "Restore this version" puts it back."""
    from blk.data.captions import CaptionStore, version_label
    from blk.errors import UserError

    if not editing or not version_id:
        return ""
    try:
        store = CaptionStore(context.captioning.dataset(editing["dataset"]))
        version = next((v for v in store.versions(editing["image"]) if v["id"] == version_id), None)
    except (UserError, OSError) as exc:
        return f"**{exc}**"
    if version is None:
        return "That version is no longer in the history."
    text = version["text"] or "(no caption)"
    return f"**{moment(version['t'])} — {version_label(version)}:** {text}  \n*Restore this version* puts it back."


def view(context: StudioContext, name, image):
    """The large view of one image: picture, caption, status, its versions, and what the editor holds
    (dataset, image, hash read) for a later save."""
    from blk.data.captions import CaptionStore, version_label
    from blk.data.scan import ImageRecord, file_sha256
    from blk.data.thumbnails import thumbnail
    from blk.errors import UserError

    if not image:
        return None, "", "", gr.Dropdown(choices=[], value=None), None
    try:
        folder = context.captioning.dataset(name)
        store = CaptionStore(folder)
        caption = store.read(image)
        path = context.workspace.confine(image, base=folder)
        record = ImageRecord(image, path.stat().st_size, file_sha256(path))
        picture = str(thumbnail(folder, record, size=768))
    except (UserError, OSError) as exc:
        return None, "", f"**{exc}**", gr.Dropdown(choices=[], value=None), None
    versions = [(f"{moment(v['t'])} — {version_label(v)} — {v['text'][:60]}", v["id"])
                for v in reversed(store.versions(image))]
    warning = f" — {caption.warning}" if caption.warning else ""
    editing = {"dataset": name, "image": image, "hash": caption.hash}
    return (picture, caption.text, f"**{image}** — {store.status(image)}{warning}",
            gr.Dropdown(choices=versions, value=None), editing)


def reread(context: StudioContext, editing):
    """The large view again, of the image the editor holds (after a save, in its own dataset)."""
    return view(context, editing["dataset"], editing["image"]) if editing else view(context, None, None)


def editor_action(context: StudioContext, editing, text, action, version_id) -> str:
    """Save, approve or restore in the large view: always into the dataset the caption was read from."""
    if not editing:
        return "**Click an image in the grid first.**"
    return view_action(context, editing["dataset"], editing["image"], text, editing["hash"], action, version_id)


def view_action(context: StudioContext, name, image, text, base_hash, action, version_id) -> str:
    from blk.data.captions import CaptionStore
    from blk.errors import CaptionConflict, UserError

    try:
        store = CaptionStore(context.captioning.dataset(name))
        if not image:
            raise UserError("Click an image in the grid first.")
        if action == "save":
            store.save(image, text, base_hash, source="human")
            return f"Saved {image}."
        if action == "approve":
            if text != store.read(image).text:
                base_hash = store.save(image, text, base_hash, source="human").hash
            store.approve(image, base_hash)
            return f"Approved {image}."
        if not version_id:
            raise UserError("Choose a version to restore.")
        store.restore(image, version_id, base_hash)
        return f"Restored an earlier version of {image}."
    except CaptionConflict as exc:
        return f"**{exc}** On disk: “{exc.current_text}”."
    except UserError as exc:
        return f"**{exc}**"


def step(state, image, offset):
    images = [row["image"] for row in state or []]
    if not images:
        return image
    if image not in images:
        return images[0]
    return images[max(0, min(len(images) - 1, images.index(image) + offset))]


def bulk_preview(context: StudioContext, name, scope, state, kind, find, replace, regex, ignore_case, prefix, suffix,
                 trigger):
    """The preview table, the pending edit (its dataset, kind and changes; None if nothing would change), a note."""
    from blk.data.bulk import preview_affix, preview_replace, preview_trigger
    from blk.data.captions import CaptionStore
    from blk.data.scan import scan
    from blk.errors import UserError

    try:
        folder = context.captioning.dataset(name)
        store = CaptionStore(folder)
        images = [r.rel for r in scan(folder) if r.ok] if scope == "the whole dataset" else [r["image"] for r in state or []]
        if kind == "replace":
            changes = preview_replace(store, images, find, replace, bool(regex), bool(ignore_case))
        elif kind == "affix":
            changes = preview_affix(store, images, prefix, suffix)
        else:
            changes = preview_trigger(store, images, trigger, add=(kind == "trigger-add"))
    except UserError as exc:
        return [], None, f"**{exc}**"
    table = [[c.image, c.before, c.after] for c in changes]
    note = f"{len(changes)} caption(s) would change. Nothing is written until you apply." if changes else "Nothing would change."
    pending = {"dataset": name, "kind": kind, "changes": [c.__dict__ for c in changes]} if changes else None
    return table, pending, note


def bulk_apply(context: StudioContext, pending) -> str:
    """Apply a previewed bulk edit to the dataset it was previewed on."""
    from blk.data.bulk import BulkLog, Change
    from blk.errors import UserError

    if not pending or not pending.get("changes"):
        return "Preview a bulk edit first."
    try:
        result = BulkLog(context.captioning.dataset(pending["dataset"])).apply(
            [Change(**c) for c in pending["changes"]], pending["kind"])
    except UserError as exc:
        return f"**{exc}**"
    note = f"Applied to {len(result.applied)} caption(s) in {pending['dataset']}; undo is available."
    if result.unapproved:  # an approval signs off a text; the new text is not that one
        count = len(result.unapproved)
        note += (f" {count} of them {'was' if count == 1 else 'were'} approved and {'is' if count == 1 else 'are'} "
                 "now *edited*: check and approve again (Status › edited lists them).")
    if result.conflicts:
        note += f" Left alone, changed meanwhile: {', '.join(result.conflicts)}."
    return note


def bulk_undo(context: StudioContext, name) -> str:
    from blk.data.bulk import BulkLog
    from blk.errors import UserError

    try:
        result = BulkLog(context.captioning.dataset(name)).undo()
    except UserError as exc:
        return f"**{exc}**"
    note = f"Undone for {len(result.applied)} caption(s)."
    if result.conflicts:
        note += f" Kept the newer text of: {', '.join(result.conflicts)}."
    return note


def switch_dataset(context: StudioContext, name, status, text, regex, sort, descending, page, page_size, term=None):
    """Another dataset chosen: its first page, and nothing left of the previous one (the clicked image,
    the large view, a pending bulk preview, the Words panel's filter)."""
    return (*load_page(context, name, status, text, regex, sort, descending, page, page_size), None,
            *view(context, None, None), "", [], None, "", None, gr.Dropdown(choices=[], value=None))


def build(context: StudioContext, dataset: gr.Dropdown, selected_image: gr.State, rows_state: gr.State,
          after_batch, style_saved, token_model: gr.Dropdown, examples: gr.Dataframe) -> None:
    with gr.Row(elem_classes="blk-wrap"):  # wraps in a narrow window (the checkboxes lost their labels)
        status = gr.Dropdown(STATUSES, value="all", label="Status", scale=1)
        text = gr.Textbox(label="Filter (text in caption or name)", scale=3)
        regex = gr.Checkbox(label="Regex", scale=0, min_width=80)
        sort = gr.Dropdown(SORTS, value="name", label="Sort by", scale=1)
        descending = gr.Checkbox(label="Descending", scale=0, min_width=110)
        page = gr.Number(value=1, precision=0, label="Page", scale=0, min_width=80)
        page_size = gr.Dropdown([25, 50, 100, 200], value=50, label="Rows", scale=0, min_width=110)  # room for ▾
        refresh = gr.Button("Show", variant="primary", scale=0, min_width=80)
    with gr.Accordion("Words: how the captions use words and tags", open=False, elem_id="blk-words") as words_box:
        gr.Markdown(WORD_RULES)
        words_summary = gr.Markdown(elem_id="blk-words-summary")
        with gr.Row(elem_classes="blk-wrap"):  # one above the other when side by side would cut their columns
            top_terms = gr.Dataframe(headers=TOP_HEADERS, interactive=False, max_height=320, elem_id="blk-words-top",
                                     label=f"Most frequent (up to {TOP_TERMS}); click one to filter the grid",
                                     min_width=420)
            rare_terms = gr.Dataframe(headers=RARE_HEADERS, interactive=False, max_height=320, elem_id="blk-words-rare",
                                      label="In one caption only (a typo? a one-off?); click one to see it",
                                      min_width=420)
        with gr.Row():
            term_choice = gr.Dropdown(choices=[], value=None, allow_custom_value=True, scale=3, elem_id="blk-words-term",
                                      label="Show only captions with this word, tag or phrase")
            all_terms = gr.Button("Show all captions", size="sm", scale=0, min_width=160, elem_id="blk-words-all")
    words_open = gr.State(False)  # counted only while the panel is open
    word_filter = gr.State(None)  # the term the grid is filtered by (not part of the grid_page API)
    summary = gr.Markdown()
    with gr.Accordion("Thumbnails of this page (click one to open it large)", open=True):
        thumbs = gr.Gallery(columns=10, height=170, object_fit="contain", allow_preview=False, show_label=False,
                            elem_id="blk-caption-thumbs")
    # editable only with rows to edit: an empty editable table offered "+" rows and "drop a CSV" to a new dataset
    table = gr.Dataframe(headers=HEADERS, interactive=False, static_columns=[0, 2, 3, 4], wrap=True,
                         column_widths=["16%", "51%", "11%", "11%", "11%"], label="Captions (edit in place)",
                         elem_id="blk-caption-grid")
    with gr.Row():
        save = gr.Button("Save edits", variant="primary")
        note = gr.Markdown()

    with gr.Accordion("One image, large", open=True):
        editing = gr.State(None)  # the dataset, image and hash the caption below was read from
        with gr.Row():
            picture = gr.Image(label="Image", type="filepath", interactive=False, height=420, scale=1)
            with gr.Column(scale=1):
                title = gr.Markdown()
                caption = gr.Textbox(label="Caption", lines=6, elem_id="blk-large-caption")
                with gr.Row():
                    previous = gr.Button("◀ Previous (Alt+←)", size="sm", elem_id="blk-prev")
                    next_ = gr.Button("Next (Alt+→) ▶", size="sm", elem_id="blk-next")
                with gr.Row():
                    save_one = gr.Button("Save", size="sm", variant="primary")
                    approve = gr.Button("Approve", size="sm")
                versions = gr.Dropdown(label="History (newest first)", choices=[])
                restore = gr.Button("Restore this version", size="sm")
                view_note = gr.Markdown()

    with gr.Accordion("Bulk edit (preview first, undo after)", open=False):
        scope = gr.Radio([("rows shown in the grid", "rows shown"), ("the whole dataset", "the whole dataset")],
                         value="rows shown", label="Apply to")
        with gr.Row():
            find = gr.Textbox(label="Find")
            replace = gr.Textbox(label="Replace with")
            bulk_regex = gr.Checkbox(label="Regex")
            ignore_case = gr.Checkbox(label="Ignore case")
            preview_replace = gr.Button("Preview replace", size="sm")
        with gr.Row():
            prefix = gr.Textbox(label="Prefix")
            suffix = gr.Textbox(label="Suffix")
            preview_affix = gr.Button("Preview prefix/suffix", size="sm")
        with gr.Row():
            trigger = gr.Textbox(label="Trigger word")
            preview_add = gr.Button("Preview add trigger", size="sm")
            preview_remove = gr.Button("Preview remove trigger", size="sm")
        preview = gr.Dataframe(headers=["image", "before", "after"], interactive=False, wrap=True, label="Preview")
        pending = gr.State(None)  # the previewed edit: its dataset, kind and changes
        with gr.Row():
            apply = gr.Button("Apply", variant="primary", size="sm")
            undo = gr.Button("Undo last bulk edit", size="sm")
        bulk_note = gr.Markdown()

    query = [dataset, status, text, regex, sort, descending, page, page_size, word_filter]
    shown = [table, rows_state, summary, page]
    words = [words_summary, top_terms, rare_terms, term_choice]

    def show(*args):
        return load_page(context, *args)

    def count_words(is_open, name):
        return refresh_words(context, is_open, name)

    def shown_again(event):
        """The grid again, then the Words panel (if open) and the few-shot examples, whose text follows their
        captions: after anything that may have changed captions."""
        event.then(lambda n: examples_rows(context, n), inputs=dataset, outputs=examples, show_progress="hidden")
        return event.then(show, inputs=query, outputs=shown).then(count_words, inputs=[words_open, dataset],
                                                                  outputs=words)

    large = [picture, caption, title, versions, editing]
    refresh.click(show, inputs=query, outputs=shown, api_name="grid_page").then(
        count_words, inputs=[words_open, dataset], outputs=words)
    dataset.change(lambda *q: switch_dataset(context, *q), inputs=query,
                   outputs=shown + [selected_image] + large + [view_note, preview, pending, bulk_note, word_filter,
                                                               term_choice]
                   ).then(count_words, inputs=[words_open, dataset], outputs=words)
    dataset.change(lambda n: style_trigger_of(context, n), inputs=dataset, outputs=trigger, show_progress="hidden")
    style_saved.then(lambda n: style_trigger_of(context, n), inputs=dataset, outputs=trigger, show_progress="hidden")
    shown_again(after_batch)
    shown_again(token_model.input(lambda name: use_token_model(context, name), inputs=token_model))
    style_saved.then(count_words, inputs=[words_open, dataset], outputs=words)  # its trigger word may be new
    shown_again(save.click(lambda n, t, s: save_edits(context, n, t, s), inputs=[dataset, table, rows_state],
                           outputs=note, api_name="grid_save"
                           ).then(lambda e: reread(context, e), inputs=editing, outputs=large))

    words_box.expand(lambda n: (True, *word_panel(context, n)), inputs=dataset, outputs=[words_open] + words)
    words_box.collapse(lambda: False, outputs=words_open)
    filtered = shown + [word_filter, term_choice]

    def pick(name, status_, text_, regex_, sort_, descending_, page_, page_size_, evt: gr.SelectData):
        return filter_by_word(context, picked_term(evt), name, status_, text_, regex_, sort_, descending_, page_,
                              page_size_)

    for terms_table in (top_terms, rare_terms):
        terms_table.select(pick, inputs=query[:-1], outputs=filtered)
    term_choice.input(lambda t, *q: filter_by_word(context, t, *q), inputs=[term_choice] + query[:-1], outputs=filtered)
    all_terms.click(lambda *q: filter_by_word(context, None, *q), inputs=query[:-1], outputs=filtered)

    def on_select(state, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return state[row]["image"] if state and 0 <= row < len(state) else None

    table.select(on_select, inputs=rows_state, outputs=selected_image)
    rows_state.change(lambda rows: gr.Dataframe(interactive=bool(rows)), inputs=rows_state, outputs=table,
                      show_progress="hidden")
    # the page's thumbnails follow whatever changed the rows (a page, a filter, a save, another dataset)
    rows_state.change(lambda rows: (yield from page_thumbnails(context, rows)), inputs=rows_state, outputs=thumbs,
                      show_progress="hidden")
    def on_thumbnail(rows, evt: gr.SelectData):
        return thumbnail_image(rows, evt.value)

    thumbs.select(on_thumbnail, inputs=rows_state, outputs=selected_image)
    selected_image.change(lambda n, img: view(context, n, img), inputs=[dataset, selected_image], outputs=large)
    selected_image.change(lambda: "", outputs=view_note, show_progress="hidden")  # the last image's note is history
    versions.input(lambda e, v: preview_version(context, e, v), inputs=[editing, versions], outputs=view_note)
    previous.click(lambda s, img: step(s, img, -1), inputs=[rows_state, selected_image], outputs=selected_image)
    next_.click(lambda s, img: step(s, img, +1), inputs=[rows_state, selected_image], outputs=selected_image)
    for button, action in ((save_one, "save"), (approve, "approve"), (restore, "restore")):
        shown_again(button.click(lambda e, t, v, action=action: editor_action(context, e, t, action, v),
                                 inputs=[editing, caption, versions], outputs=view_note,
                                 ).then(lambda e: reread(context, e), inputs=editing, outputs=large))

    bulk_inputs = [dataset, scope, rows_state]
    bulk_fields = [find, replace, bulk_regex, ignore_case, prefix, suffix, trigger]
    for button, kind in ((preview_replace, "replace"), (preview_affix, "affix"), (preview_add, "trigger-add"),
                         (preview_remove, "trigger-remove")):
        button.click(lambda n, sc, st, *f, kind=kind: bulk_preview(context, n, sc, st, kind, *f),
                     inputs=bulk_inputs + bulk_fields, outputs=[preview, pending, bulk_note])
    shown_again(apply.click(lambda p: bulk_apply(context, p), inputs=pending, outputs=bulk_note
                            ).then(lambda: ([], None), outputs=[preview, pending]))
    shown_again(undo.click(lambda n: bulk_undo(context, n), inputs=dataset, outputs=bulk_note))
