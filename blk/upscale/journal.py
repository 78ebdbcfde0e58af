"""Resume an interrupted upscale from its finished rows of tiles; shared by both Upscale paths.

A large job runs for hours; if the process dies (killed, crashed, power cut)
the canvas on disk already holds every finished row. The journal is what makes
that canvas usable again:

    .blk-tmp-OUT.tif.journal.json   the job's key (a hash of everything that decides the pixels),
                                    its temp token, the pass in progress, the tile layout in use
                                    (`origin_fade`, `tile`: `blk.upscale.tiler.spans`), its
                                    `rows_done`, the line the next row fades in against
                                    (`row_fade`) and the pass's `tiles_done`
    .blk-tmp-TOKEN.pass0.canvas     the canvases (one per pass still needed), named from the token
    .blk-tmp-TOKEN.band             the canvas band the row in progress may disturb, saved
                                    before the row writes anything
    .blk-tmp-OUT.tif.lock           held (flock) while a job writes OUT, so two runs never share files

Protocol per row (the tiler's hooks, `tiler_hooks`): before the row's first
write, the band `[y_top, kept_until)` and the row's extent go to the band file
(written whole, fsynced, renamed into place); once the row's writes are all
finished (on a GPU the tiler does this while the next row's first batch computes), the
canvas is fsynced, then the journal is rewritten atomically with the layout and
its rows done. On the
next run with the same key, a band file that belongs to the journal's next row
(it fades in against the same line: the row itself, or its first row in the
smaller layout an out-of-memory error started) is put back and the rest of that
row's extent zeroed — undoing a row that died half-way — and the tiler
continues with the recorded layout after its finished rows, which are exactly
the rows an uninterrupted run does next. Every file has the `.blk-tmp-` prefix,
so nothing looks like a finished result.

A job that runs another tiled job inside one of its stages (the diffusion
path's ESRGAN enlargement of a step) gives it a `child` journal: the same
protocol, with its state, canvases and band under this job's token
(`.blk-tmp-TOKEN.NAME.journal.json`, `.blk-tmp-TOKEN.NAME.pass0.canvas` …), so
they are resumed only under this job's key and removed with its files.

What ends a job decides what stays: success and errors remove every file
(`discard`); a process kill leaves them, and so does Ctrl+C (KeyboardInterrupt:
`suspend`), which is how a terminal user interrupts, and so does Cancel once a
tile is finished (hours of a mural are not thrown away by a click; the same job
started again continues). A job
whose key differs (other input content, model, output, settings) finds the old
journal, removes its files, and starts fresh; so does a journal of another
`VERSION` (version 1 recorded the next row's position in the older greedy tile
layout, which the current one would not reproduce; version 2 had no durability,
so a build that reads it would resume a small job's journal after a reboot).

Durability: a large job's journal is durable — the band file, the canvas after each
row and the journal are fsynced, so even a power cut loses at most a row. A small
one (an output under `DURABLE_FROM_PIXELS`: seconds on a GPU, a few minutes on a
CPU) skips the band's and the canvas's fsyncs, which on a GPU cost a good part of
the job (each row's canvas flushed to the disk while the model waits), and records
the machine's boot instead: after a kill, a crash or Ctrl+C everything it wrote is
still in the system's page cache and the job resumes the same way; after a reboot
(where an unsynced write may be lost) its journal is stale and the job starts
afresh. The journal file itself is always fsynced (a few bytes), so that a reboot
still finds it and removes the files it names. Left as a risk: a write-back error
of the canvas within one boot (a failing disk) is not seen until the result is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
import numpy as np

from blk.atomic import TEMP_PREFIX
from blk.errors import UserError
from blk.upscale.canvas import Canvas
from blk.upscale.tiler import RowBand, RowDone

VERSION = 3
# Outputs from this many pixels on keep a durable journal (fsynced every row); smaller ones a boot-bound one
DURABLE_FROM_PIXELS = 64_000_000
_PASS_START = {"origin_fade": None, "rows_done": 0, "row_fade": None, "tiles_done": 0}  # a pass's first layout, no rows


def fresh_state(key: str, durable: bool = True, input_id: str | None = None) -> dict:
    """A job that has done nothing yet; a journal that is not `durable` holds the machine's boot. `input_id`:
    the input's content hash, by which a job of another output finds this one's files (`others_kept`)."""
    boot = None if durable else boot_id()
    return {"version": VERSION, "key": key, "token": secrets.token_hex(6), "pass": 0, "tile": None, **_PASS_START,
            "durable": boot is None, **({"boot": boot} if boot else {}), **({"input": input_id} if input_id else {})}


def durable_for(pixels: int) -> bool:
    """Whether a job of an output of `pixels` keeps a durable journal."""
    return pixels >= DURABLE_FROM_PIXELS


def boot_id() -> str | None:
    """This boot of the machine (Linux); None where the system does not say (every journal is then durable)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def job_key(parameters: dict) -> str:
    """A stable hash of what decides a job's pixels (JSON-able values; paths as strings)."""
    text = json.dumps(parameters, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


class Journal:
    """The resume state of the job writing `output`. Use `Journal.begin(output, key)`."""

    def __init__(self, output: Path, key: str, state: dict, resumed: bool, lock_fd: int | None):
        self.output, self.key, self.state, self.resumed, self._lock_fd = output, key, state, resumed, lock_fd
        self.folder = output.parent
        self._open: list[Canvas] = []
        self.replaced: dict | None = None  # an interrupted job of other settings whose work `begin` removed

    def replaced_sentence(self) -> str:
        """One sentence when `begin` removed an interrupted job's work towards this output because its settings
        differ ("" when none): the tiles were gone without a word, while Ctrl+C had said to run the same command
        again."""
        if not self.replaced:
            return ""
        return (f"An interrupted job writing {self.output.name} with other settings had work kept; it was removed, "
                "and this job starts afresh (only the same settings continue an interrupted job).")

    # -- names ------------------------------------------------------------------------------
    @staticmethod
    def path_for(output: Path) -> Path:
        return output.parent / f"{TEMP_PREFIX}{output.name}.journal.json"

    @property
    def path(self) -> Path:
        return self.path_for(self.output)

    def temp(self, name: str) -> Path:
        """A temp file of this job, found again on resume and removed by `discard` (e.g. "resample.canvas")."""
        return self.folder / f"{TEMP_PREFIX}{self.state['token']}.{name}"

    def canvas_path(self, pass_index: int) -> Path:
        return self.temp(f"pass{pass_index}.canvas")

    @property
    def band_path(self) -> Path:
        return self.temp("band")

    # -- start --------------------------------------------------------------------------------
    @classmethod
    def begin(cls, output: str | os.PathLike, key: str, durable: bool = True,
              input_id: str | None = None) -> "Journal":
        """Take the job's lock; resume a matching journal, or remove a stale one and start fresh.
        `durable=False`: a small job's journal, without fsyncs, valid until the machine reboots."""
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(output.parent / f"{TEMP_PREFIX}{output.name}.lock", output)
        try:
            old = _read_json(cls.path_for(output))
            if _resumable(old, key):
                return cls(output, key, old, True, lock_fd)
            if old is not None and _token_ok(old.get("token")):
                _remove_token_files(output.parent, old["token"])
            with contextlib.suppress(FileNotFoundError):
                cls.path_for(output).unlink()
            journal = cls(output, key, fresh_state(key, durable, input_id), False, lock_fd)
            journal.replaced = old if old is not None and (old.get("pass") or old.get("tiles_done")) else None
            journal._save()
            return journal
        except BaseException:
            _unlock(lock_fd)
            raise

    @classmethod
    def peek(cls, output: str | os.PathLike, key: str, passes: int) -> dict | None:
        """The state `begin` would resume for job `key` writing `output` (read only, its lock not taken), for an
        estimate of what starting the job will do; None when there is none, when the job is running now, or when
        its canvases are gone (`check_files`: the job starts afresh). `passes`: as `check_files` takes them."""
        output = Path(output)
        old = _read_json(cls.path_for(output))
        if not _resumable(old, key) or _held(output.parent / f"{TEMP_PREFIX}{output.name}.lock"):
            return None
        unlocked = cls(output, key, old, True, None)  # its names only: nothing is written or locked
        return old if _canvases_kept(old, passes, unlocked.has_canvas) else None

    def others_kept(self) -> list[str]:
        """One sentence for each interrupted job of the same input towards another output in this folder (not
        running: its lock is free). Only the same job resumes and removes its files, and both Upscale paths name
        the output by its size, so "cancel, change the scale, start again" left gigabytes of hidden canvases
        behind, unsaid; they are kept (they may be hours of a mural) and said, with their size."""
        from blk.upscale.canvas import _amount

        ours = self.state.get("input")
        sentences = []
        for path in sorted(self.folder.glob(f"{TEMP_PREFIX}*.journal.json")):
            other = _read_json(path)
            if path == self.path or not ours or other is None or other.get("input") != ours \
                    or not _token_ok(other.get("token")) or other.get("version") != VERSION \
                    or other.get("boot") not in (None, boot_id()):  # a job that would not resume: not "run again"
                continue
            name = path.name[len(TEMP_PREFIX):-len(".journal.json")]
            if _held(self.folder / f"{TEMP_PREFIX}{name}.lock"):  # running now, in another window or command
                continue
            try:
                files = [p for p in self.folder.glob(f"{TEMP_PREFIX}{other['token']}.*") if p.is_file()]
                size = sum(p.stat().st_size for p in files) + path.stat().st_size
            except OSError:  # that job started meanwhile and is removing them
                continue
            sentences.append(f"An interrupted job of this image towards {name} keeps {_amount(size)} of working "
                             f"files here ({TEMP_PREFIX}{other['token']}.* and {path.name}): run that job again to "
                             "finish it, or delete those files to free the space.")
        return sentences

    # -- canvases -----------------------------------------------------------------------------
    def open_canvas(self, pass_index: int, width: int, height: int, channels: int) -> Canvas:
        """Pass `pass_index`'s canvas: reopened when resuming that pass (its interrupted row undone),
        else created. Closed (not removed) by `suspend`, removed by `discard`."""
        path = self.canvas_path(pass_index)
        if self.state["pass"] == pass_index and path.exists() and self.state["tiles_done"]:
            canvas = Canvas(path, width, height, channels, create=False)
            self._undo_interrupted_row(canvas, pass_index)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            canvas = Canvas(path, width, height, channels)
        self._open.append(canvas)
        return canvas

    def reopen(self, pass_index: int, width: int, height: int, channels: int) -> Canvas:
        """A finished pass's canvas (the source of the next pass)."""
        canvas = Canvas(self.canvas_path(pass_index), width, height, channels, create=False)
        self._open.append(canvas)
        return canvas

    def release(self, canvas: Canvas) -> Canvas:
        """A canvas handed to someone else (e.g. the parent of a `child` journal): no longer closed or
        removed by this journal."""
        if canvas in self._open:
            self._open.remove(canvas)
        return canvas

    def adopt(self, canvas: Canvas) -> Canvas:
        """A canvas made elsewhere under `temp(...)` (e.g. a resample): closed/removed with the others."""
        self._open.append(canvas)
        return canvas

    def forget(self, canvas: Canvas) -> None:
        """A canvas no longer needed: removed now."""
        canvas.remove()
        if canvas in self._open:
            self._open.remove(canvas)

    def has_canvas(self, pass_index: int) -> bool:
        return self.canvas_path(pass_index).exists()

    def check_files(self, passes: int) -> None:
        """A resumed journal whose canvases are gone (deleted by hand) starts the job afresh."""
        if not self.resumed:
            return
        if _canvases_kept(self.state, passes, self.has_canvas):
            return
        self._remove_files()
        kept = {name: self.state[name] for name in ("decided",) if name in self.state}  # what this run follows
        self.state = fresh_state(self.key, self.durable, self.state.get("input")) | kept
        self.resumed = False
        self._save()

    def child(self, name: str, key: str) -> "Journal":
        """The journal of a job run inside one stage of this one, named `name` (unique among its
        stages): its files are this job's temp files `NAME.*`; resumed when its state holds `key`,
        else started afresh. It takes no lock (this job's covers it); end it with its own `ending()`."""
        return _Child(self, name, key)

    # -- the tiler's hooks ----------------------------------------------------------------------
    def start_of(self, pass_index: int) -> dict:
        """`run_tiles` keywords that continue `pass_index` where it stopped (fresh: from row 0)."""
        if self.state["pass"] != pass_index:
            return {}
        return {name: self.state[name] for name in ("origin_fade", "rows_done", "tiles_done")}

    @property
    def durable(self) -> bool:
        """Whether the band, the canvas and the journal are fsynced (see the module's docstring)."""
        return self.state.get("durable", True)

    def tiler_hooks(self, pass_index: int, canvas: Canvas) -> dict:
        """`run_tiles(..., **journal.tiler_hooks(k, canvas))`: start point plus both row hooks."""
        def on_row_start(band: RowBand) -> None:
            y0, rows = band.saved
            header = {"pass": pass_index, "origin_fade": band.origin_fade, "tile": band.tile, "row": band.row,
                      "row_start": band.row_start, "row_fade": band.row_fade, "y_top": band.y_top,
                      "kept_until": band.kept_until, "y_end": band.y_end, "shape": list(rows.shape)}
            _write_durably(self.band_path, json.dumps(header).encode() + b"\n" +
                           np.ascontiguousarray(rows, dtype=np.uint16).tobytes(), fsync=self.durable)

        def on_row_done(done: RowDone) -> None:
            if self.durable:
                canvas.flush()  # the row's pixels reach the disk before the journal says they are there
            self.state.update({"pass": pass_index, "origin_fade": done.origin_fade, "tile": done.tile,
                               "rows_done": done.rows_done, "row_fade": done.row_end, "tiles_done": done.tiles_done})
            self._save()

        return self.start_of(pass_index) | {"on_row_start": on_row_start, "on_row_done": on_row_done}

    def pass_done(self, pass_index: int, tiles: int | None = None) -> None:
        """Pass `pass_index` is complete: the next run starts at the next pass (tile size kept). `tiles`: how many
        it took (after an out-of-memory halving, more than planned), for a resumed job's counts (`tiles_of`)."""
        self.state.update({"pass": pass_index + 1, **_PASS_START})
        if tiles is not None:
            self.state["tiles_of"] = {**self.state.get("tiles_of", {}), str(pass_index): tiles}
        self._save()
        with contextlib.suppress(FileNotFoundError):
            self.band_path.unlink()

    def decided(self, name: str, value):
        """A choice the job made when it began (e.g. whether it ends with a full-frame pass, from the memory free
        then), kept for its resumes: `value` the first time, the first run's choice after (a resume that chose
        again from what is free now would give another picture than the run it continues)."""
        choices = self.state.setdefault("decided", {})
        if name not in choices:
            choices[name] = value
            self._save()
        return choices[name]

    @property
    def tile(self) -> int | None:
        return self.state.get("tile")

    def set_tile(self, tile: int) -> None:
        if self.state.get("tile") != tile:
            self.state["tile"] = tile
            self._save()

    def describe(self, totals: list[int] | None = None) -> str:
        """One sentence on where a resumed job continues (for the CLI and the UI)."""
        return describe_state(self.state, totals)

    # -- end ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def ending(self):
        """`with journal.ending():` around a job's work: success and errors discard the job's files (a full
        disk becomes one sentence); Ctrl+C suspends them for a resume, and so does a cancel after the first
        finished tile (before it there is nothing to keep)."""
        from blk.upscale.canvas import disk_full, is_disk_full
        from blk.upscale.tiler import Cancelled

        try:
            yield self
        except KeyboardInterrupt:
            self.suspend()
            raise
        except Cancelled as exc:
            # `kept`: a child journal (the diffusion path's enlargement) kept finished rows of its own, which
            # this job's files hold: a cancel in the first step's enlargement removed them and said they were kept
            if not exc.kept and self.state["pass"] == 0 and not self.state["tiles_done"]:
                self.discard()
                raise
            self.suspend()
            raise Cancelled(kept=True) from None
        except BaseException as exc:
            self.discard()
            if is_disk_full(exc) and not isinstance(exc, UserError):
                raise disk_full(self.output) from None
            raise
        self.discard()

    def suspend(self) -> None:
        """The job was interrupted: keep every file for the next run; close and unlock."""
        for canvas in self._open:
            canvas.close()
        self._open.clear()
        _unlock(self._lock_fd)
        self._lock_fd = None

    def discard(self) -> None:
        """The job is over (done, cancelled or failed): remove every file it left, then unlock."""
        for canvas in self._open:
            canvas.remove()
        self._open.clear()
        self._remove_files()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.path.with_name(self.path.name + ".part").unlink()
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f"{TEMP_PREFIX}{self.output.name}.lock").unlink()
        _unlock(self._lock_fd)
        self._lock_fd = None

    # -- internals ------------------------------------------------------------------------------
    def _remove_files(self) -> None:
        _remove_token_files(self.folder, self.state["token"])

    def _save(self) -> None:
        _write_durably(self.path, (json.dumps(self.state, indent=1, sort_keys=True) + "\n").encode())

    def _undo_interrupted_row(self, canvas: Canvas, pass_index: int) -> None:
        """Put back the band of a row that died half-way (if the band file belongs to the next row)."""
        try:
            raw = self.band_path.read_bytes()
        except FileNotFoundError:
            return
        head, _, body = raw.partition(b"\n")
        try:
            header = json.loads(head)
        except ValueError:
            return  # never renamed into place whole, so never used by a row
        if (header["pass"], header["row_fade"]) != (pass_index, self.state["row_fade"]):
            return  # the next row never started writing (the file is from the row before)
        shape = tuple(header["shape"])
        rows = np.frombuffer(body, dtype=np.uint16)
        if rows.size != int(np.prod(shape)):
            raise UserError(f"The saved state of an interrupted upscale next to {self.output.name} is damaged; "
                            "delete its .blk-tmp- files and start again.")
        canvas.restore((header["y_top"], rows.reshape(shape)))
        canvas.clear(header["kept_until"], header["y_end"])
        canvas.flush()


class _Child(Journal):
    """`Journal.child`: the same protocol, every file named `TOKEN.NAME.*` under the parent's token."""

    def __init__(self, parent: Journal, name: str, key: str):
        self.name = name
        token = parent.state["token"]
        super().__init__(parent.output, key, {"token": token}, False, None)
        old = _read_json(self.path)
        if old is not None and old.get("version") == VERSION and old.get("key") == key and old.get("token") == token:
            self.state, self.resumed = old, True
        else:
            self._remove_files()  # another key's (or a damaged) state and its canvases
            self.state = fresh_state(key, parent.durable) | {"token": token}
            self._save()

    @property
    def path(self) -> Path:
        return self.temp("journal.json")

    def temp(self, name: str) -> Path:
        return super().temp(f"{self.name}.{name}")

    def _remove_files(self) -> None:
        for path in self.folder.glob(f"{TEMP_PREFIX}{self.state['token']}.{self.name}.*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _canvases_kept(state: dict, passes: int, has_canvas) -> bool:
    """Whether the canvases a resume of `state` reads are there (`has_canvas(pass)`): the last finished pass's,
    and the one it continues when it has finished tiles of it."""
    k = state.get("pass", 0)
    need = ([k - 1] if k > 0 else []) + ([k] if k < passes and state.get("tiles_done") else [])
    return all(has_canvas(i) for i in need)


def _resumable(state: dict | None, key: str) -> bool:
    """A journal of this job, of this layout version, valid on this boot of the machine."""
    return state is not None and state.get("version") == VERSION and state.get("key") == key \
        and _token_ok(state.get("token")) and state.get("boot") in (None, boot_id())


def _token_ok(token) -> bool:
    return isinstance(token, str) and len(token) == 12 and all(c in "0123456789abcdef" for c in token)


def _remove_token_files(folder: Path, token: str) -> None:
    for path in folder.glob(f"{TEMP_PREFIX}{token}.*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def describe_state(state: dict, totals: list[int] | None = None, begin: str = "Resuming an interrupted job") -> str:
    """Where a job resumes from the journal `state` it left (`totals`: each pass's tiles): `Journal.describe`, and
    an estimate's note before the job starts (`begin`: "Starting resumes the interrupted job")."""
    k, done = state["pass"], state["tiles_done"]
    before = sum(totals[:k]) if totals else 0
    of = f" of {sum(totals)}" if totals else ""
    fade = state["row_fade"]
    where = "at its first row" if fade is None else f"after the row ending at input y={fade}"
    return f"{begin} at pass {k + 1}, tile {before + done + 1}{of} ({where}, tiles of at most {state['tile']} px)."


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _write_durably(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write a fixed-name `.part` sibling, fsync (unless told not to: a small job's journal), rename (a kill
    mid-write never leaves a random name)."""
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view.nbytes:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, path)


def _lock(path: Path, output: Path) -> int | None:
    """An exclusive flock on `path`, checked to still be the file at that name after locking."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"Another upscale, from another window or command, is writing {output.name} right "
                            "now; wait for it to finish.") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed it as we locked: take the new one


def _held(path: Path) -> bool:
    """Whether a job holds the lock file `path`, asked without taking it (a job starting at that moment would
    otherwise be told another is writing): Linux lists every flock in /proc/locks by device and inode."""
    try:
        stat = path.stat()
        locks = Path("/proc/locks").read_text()
    except OSError:  # no lock file (nothing runs), or no /proc: nothing can be said, the files are named anyway
        return False
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    return any(line.split()[5] == inode for line in locks.splitlines() if len(line.split()) > 5 and "FLOCK" in line)


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)

