"""Training runs as child processes: they survive a browser refresh or an app restart.

The app starts `python -m blk train CONFIG --run-dir RUN` in its own session,
writes the child's pid into `RUN/process.json`, and from then on knows the run
only through its folder: `events.jsonl` for progress, the pid for stop (SIGTERM:
the trainer finishes its step and saves a checkpoint) and kill (SIGKILL: at most
the steps since the last checkpoint are lost). Any app — this one after a
restart included — re-attaches by reading the folder. A trainer started from
the command line (`studio.py train`) writes its own process.json, so the app
sees it live and its Stop and Kill reach it (`record_command_line_trainer`).

With several GPUs (`schedule.gpus` > 1) the same command runs under
`accelerate launch`, one trainer process per GPU (see `distributed`). The pid
is then the launcher's (torchrun), which starts each trainer in a session of
its own: stop signals the trainers found under it (they agree on a step, save
it and end together), kill freezes the launcher and kills it and them.

A run resumes on as many GPUs as it trained on or, on a machine with fewer, on
fewer (`resume_gpus`): a step's micro-batches are numbered over all processes,
so W GPUs with accumulation A train exactly what W' GPUs with W·A / W' do.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from blk import atomic
from blk.errors import UserError
from blk.train.config import TrainConfig, save_config
from blk.train.distributed import CPU_PROCESSES
from blk.workspace import Workspace

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENDED = ("finished", "stopped", "error")  # the statuses a trainer writes last
STEM_BYTES = 120  # of a run folder's name before its date stamp


@dataclass(frozen=True)
class RunInfo:
    name: str
    folder: Path
    status: str  # running | finished | stopped | error | killed | starting
    step: int
    steps: int


def start_run(config: TrainConfig, workspace: Workspace, name: str | None = None) -> Path:
    """Write the run's config and start the trainer as a detached child; return the run folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # a name for a folder and for command lines: a dataset named "ink studies" gives ink-studies
    stem = re.sub(r"[^\w.-]+", "-", name or config.name).strip(".-") or "run"
    # a folder name holds 255 bytes: a long dataset name in a script of 3 bytes a letter overflowed it
    stem = stem.encode()[:STEM_BYTES].decode(errors="ignore").rstrip(".-")
    folder = workspace.runs / f"{stem}-{stamp}"
    if folder.exists():
        raise UserError(f"A run named {folder.name} exists already.")
    check_gpus(config.schedule.gpus)
    check_dataset(config, workspace)
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"The run folder {folder} could not be made ({exc.strerror or exc}).") from None
    save_config(config, folder / "request.yaml")
    _spawn(workspace, folder, [str(folder / "request.yaml"), "--run-dir", str(folder)], config.schedule.gpus)
    return folder


def check_dataset(config: TrainConfig, workspace: Workspace) -> None:
    """What the trainer would refuse, as one sentence here, before a run folder exists (the trainer said it in a
    run that failed at step 0 — some only after loading the model — and stayed in the Run list): the dataset
    read as the trainer reads it (usable images of a trainable size, every one captioned), the images held out
    for validation, the curriculum's folders, the model, and the LoRA files its adapters start from (read from
    their headers: damaged, of another family, another rank or adapter type; `runner.check_starting_files`)."""
    from blk.models.registry import resolve
    from blk.train.data import load_items
    from blk.train.runner import check_starting_files, plan_curriculum, split_validation

    if not config.data.dataset:
        raise UserError("Choose a dataset to train on.")
    dataset = workspace.dataset_folder(config.data.dataset)
    items = load_items(dataset, config.data.resolutions, config.data.flip)
    items, _ = split_validation(items, config.data.validation_images)  # holding out every image: said first
    if problem := config.data.validation_problem():
        raise UserError(problem)
    plan_curriculum(config, workspace, dataset, items)
    model = resolve(config.model.name, workspace, build_tiny=False)  # the trainer builds a tiny model itself
    check_starting_files(config, workspace, model)


def resume_run(workspace: Workspace, folder: Path, steps: int | None = None) -> str:
    """Continue the run in a new trainer, on fewer GPUs where this machine has fewer (the trainer then records the
    new grouping in config.yaml); return the sentence saying so ("" when it resumes on as many)."""
    if is_running(folder):
        raise UserError(f"{folder.name} is running already.")
    config = _strict_saved_config(folder)  # one edited wrong is said here, not only in the trainer's log
    if config is None:  # nothing to regroup: the trainer says what is missing
        gpus, note = 1, ""
    else:
        gpus = resume_gpus(config)  # never more than this machine has
        note = regroup(config, gpus)[1]
    extra = ["--steps", str(steps)] if steps else []
    _spawn(workspace, folder, ["--resume", str(folder), "--gpus", str(gpus), *extra], gpus)
    return note


def resume_target_problem(name: str, step: int, finished: bool, planned: int, target: int, field: str,
                          logged: int = 0) -> str:
    """Why a resume to step `target` is refused ("" when it is not): at or below the step the resume starts from
    (`runner.saved_step`) it trains nothing. `logged`: the step the run's events reached, which a kill may have
    left beyond that (the steps since its last checkpoint are trained again). `field` names where it was typed
    (the Train tab's “Resume to step”, the CLI's --steps)."""
    if target > step:
        return ""
    own = "" if finished else f", or leave it out to finish its own {planned}"
    where = f"resumes from its checkpoint at step {step}" if logged > step else f"is at step {step} already"
    return f"{name} {where}: set {field} above {step} to train it longer{own}."


def shortened_sentence(config: TrainConfig, target: int) -> str:
    """What a resume to `target`, below the steps the run was planned for, changes ("" when it is not below):
    said, since a shorter run also reshapes a cosine or polynomial learning rate (a polynomial one dropped from
    0.83·lr to 0.5·lr at once) and never starts a curriculum stage after the new end."""
    planned = config.schedule.steps
    if target >= planned:
        return ""
    changes = [f"it ends at step {target} of the {planned} it was planned for"]
    if config.schedule.lr_schedule != "constant":
        changes.append(f"its {config.schedule.lr_schedule} learning rate now decays over {target} steps")
    late = [stage.start for stage in config.data.stages if stage.start >= target]
    if late:
        changes.append(f"its curriculum stage{'s' if len(late) > 1 else ''} from step {late[0]} never start"
                       + ("" if len(late) > 1 else "s"))
    sentence = "; ".join(changes)
    return sentence[0].upper() + sentence[1:] + "."


def check_gpus(gpus: int) -> None:
    """One sentence, before anything starts, when this machine has fewer GPUs than the run asks for."""
    if gpus <= 1 or os.environ.get(CPU_PROCESSES) == "1":
        return
    from blk.models.device import cuda_device_count

    found = cuda_device_count()
    if found < gpus:
        has = f"has {found} CUDA GPU{'s' if found != 1 else ''}" if found else "has no CUDA GPU"
        raise UserError(f"This run asks for {gpus} GPUs but this machine {has}; set GPUs to {max(found, 1)}.")


def gpu_choices(config: TrainConfig) -> list[int]:
    """The GPU counts a run can resume on and train the same steps: the divisors of its micro-batches per step."""
    total = config.schedule.gpus * config.schedule.gradient_accumulation
    return [n for n in range(1, total + 1) if total % n == 0]


def resume_gpus(config: TrainConfig, asked: int | None = None) -> int:
    """The GPUs a run resumes on: `asked` (checked by `regroup`); else as many as it trained on, or, where this
    machine has fewer, the most of them that divide its micro-batches per step (1 without a GPU)."""
    if asked is not None:
        return asked
    gpus = config.schedule.gpus
    if gpus <= 1 or os.environ.get(CPU_PROCESSES) == "1":
        return gpus
    from blk.models.device import cuda_device_count

    found = cuda_device_count()
    if found >= gpus:
        return gpus
    return max(n for n in gpu_choices(config) if n <= max(found, 1))


def regroup(config: TrainConfig, gpus: int) -> tuple[TrainConfig, str]:
    """`config` on `gpus` processes with the gradient accumulation that keeps its micro-batches per step, so the
    run trains exactly the steps it would have; and the sentence saying so ("" when `gpus` is unchanged)."""
    before = config.schedule
    if gpus == before.gpus:
        return config, ""
    total = before.gpus * before.gradient_accumulation
    if gpus < 1 or total % gpus:
        choices = [str(n) for n in gpu_choices(config)]
        listed = " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)
        raise UserError(f"This run trains {_many(total, 'micro-batch', 'micro-batches')} a step "
                        f"({_many(before.gpus, 'GPU')} × gradient accumulation {before.gradient_accumulation}), "
                        f"so it can resume on {listed} GPU{'s' if len(choices) > 1 else ''}, not {gpus}.")
    regrouped = config.model_copy(deep=True)
    regrouped.schedule.gpus, regrouped.schedule.gradient_accumulation = gpus, total // gpus
    return regrouped, (f"Resuming on {_many(gpus, 'GPU')} with gradient accumulation {total // gpus} "
                       f"(it trained on {before.gpus} with {before.gradient_accumulation}): the same {total} "
                       "micro-batches a step, so the run continues exactly as it would have.")


def _many(count: int, one: str, several: str = "") -> str:
    return f"{count} {one if count == 1 else several or one + 's'}"


def train_command(workspace: Workspace, args: list[str], gpus: int = 1) -> list[str]:
    """`python -m blk train ARGS`; with several GPUs the same command under `accelerate launch` (torchrun),
    one process per GPU, data parallel."""
    train = ["-m", "blk", "--workspace", str(workspace.root), "train", *args]
    if gpus <= 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", "0",  # 0: a free port, so that two runs can train side by side
            *train]


# Set in the environment of a trainer whose starter records it in RUN/process.json (`record_trainer`).
RECORDED = "BLK_TRAINER_RECORDED"


def train_environment(recorded: bool = False) -> dict[str, str]:
    """The trainer's environment: this project importable wherever it runs from; `recorded`: its starter writes
    RUN/process.json (the trainer would otherwise record itself: `record_command_line_trainer`)."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(RECORDED, None)
    return {**env, RECORDED: "1"} if recorded else env


def stop_trainers(pid: int, processes: int) -> None:
    """SIGTERM to the trainer: it finishes its step, saves a checkpoint and ends. Several processes: to each
    trainer under the launcher `pid` (rank 0's decision makes them end at the same step), not to the launcher,
    which would pass it on and kill them 30 s later, done or not. None started yet: to the launcher (which
    ends with nothing trained to save)."""
    targets = [pid]
    if processes > 1:
        import psutil

        try:
            targets = [child.pid for child in psutil.Process(pid).children()] or [pid]
        except psutil.Error:
            pass
    for target in targets:
        try:
            os.kill(target, signal.SIGTERM)
        except ProcessLookupError:
            pass


def saved_config(folder: Path) -> TrainConfig | None:
    """The run's resolved config (what it trained with; the request, for a run stopped before its trainer wrote
    that), or None when it has none readable (the trainer says why)."""
    try:
        return _strict_saved_config(folder)
    except UserError:
        return None


def _strict_saved_config(folder: Path) -> TrainConfig | None:
    """As `saved_config`, but a config that does not read (e.g. edited by hand) is its sentence."""
    from blk.train.config import load_config

    path = folder / "config.yaml" if (folder / "config.yaml").exists() else folder / "request.yaml"
    return load_config(path) if path.exists() else None


def _spawn(workspace: Workspace, folder: Path, args: list[str], gpus: int = 1) -> None:
    log = open(folder / "trainer.log", "ab")
    command = train_command(workspace, args, gpus)
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=train_environment(recorded=True),
                               start_new_session=True)
    log.close()
    record_trainer(folder, process.pid, command, gpus)


def record_trainer(folder: Path, pid: int, command: list[str], processes: int) -> None:
    """RUN/process.json: the trainer's pid (a launcher's, with several processes), who that process is, when it
    started and how: all the app knows of a live run, whoever started it."""
    atomic.write_json(folder / "process.json", {"pid": pid, "started": time.time(), "command": command,
                                                "processes": processes, "identity": _identity(pid)})


def refuse_a_live_run(folder: Path) -> None:
    """One trainer per run folder: a second (a resume typed while the app's trainer runs) would write the same
    state and checkpoints. Not asked of a trainer the app started (the app checked, and records it as live), nor
    by a record of this process or of its launcher (`accelerate launch`: rank 0 records the launcher)."""
    pid = _pid(folder)
    if os.environ.get(RECORDED) != "1" and pid not in (os.getpid(), os.getppid()) and is_running(folder):
        raise UserError(f"{folder.name} is training already (process {pid}): stop it, or wait for it to end, "
                        "before resuming it.")


def record_command_line_trainer(folder: Path, processes: int = 1, pid: int | None = None) -> None:
    """A trainer started from the command line records itself as the app records those it starts, once its run
    folder exists (a trainer the app started finds `RECORDED` set and leaves the app's record): without it, the
    Train tab showed a live run as "killed" or "unknown", its Stop and Kill reached nothing, and Resume started
    a second trainer in its folder. `pid`: the launcher's, under `accelerate launch`."""
    if os.environ.get(RECORDED) != "1":
        record_trainer(folder, pid or os.getpid(), [sys.executable, "-m", "blk", *sys.argv[1:]], processes)


def _identity(pid: int) -> str | None:
    """Who the process `pid` is, beyond its number: the boot and the clock tick it started at (Linux's
    /proc/PID/stat, which no change of the wall clock moves; psutil's start time elsewhere). After a reboot, or
    long enough, the number belongs to another process, which a pid alone took for the trainer: the run read
    "running" for ever, and Stop or Kill would have signalled a stranger."""
    try:
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}:{started}"
    except (OSError, IndexError):
        pass
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.0f}"
    except psutil.Error:
        return None


def _process_record(folder: Path) -> dict:
    """What `record_trainer` wrote in RUN/process.json ({} when missing or unreadable: a run trained before
    command-line trainers recorded themselves, or one whose trainer has not yet made its folder)."""
    try:
        record = json.loads((folder / "process.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _processes(folder: Path) -> int:
    try:
        return int(_process_record(folder).get("processes", 1))
    except (ValueError, TypeError):
        return 1


def _spawned_at(folder: Path) -> float:
    """When the run's trainer was last started (0 when unknown: no record)."""
    try:
        return float(_process_record(folder).get("started", 0))
    except (ValueError, TypeError):
        return 0.0


def _asked_steps(folder: Path) -> int | None:
    """The `--steps` the app last started the run's trainer with (a resume to a later step), if any."""
    command = _process_record(folder).get("command") or []
    try:
        return int(command[command.index("--steps") + 1])
    except (ValueError, AttributeError, IndexError, TypeError):
        return None


def _pid(folder: Path) -> int | None:
    try:
        return int(_process_record(folder)["pid"])
    except (KeyError, ValueError, TypeError):
        return None


def is_running(folder: Path) -> bool:
    """Whether the trainer the app started for the run is alive: its pid, and (recorded since `identity` was)
    the same process, not another that was given its number since."""
    return _alive(_process_record(folder))


def _alive(record: dict) -> bool:
    """Whether the process a record names (`pid`, and `identity` where recorded) is alive."""
    try:
        pid = int(record["pid"])
    except (KeyError, ValueError, TypeError):
        return False
    identity = record.get("identity")
    if identity and _identity(pid) != identity:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this very app counts as ended
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return True


def stop_run(folder: Path) -> str:
    """Graceful: the trainer finishes the current step, saves a checkpoint and ends."""
    pid = _pid(folder)
    if pid is None or not is_running(folder):
        return f"{folder.name} is not running."
    stop_trainers(pid, _processes(folder))
    return f"Stopping {folder.name} after its current step…"


def request_samples(folder: Path) -> str:
    """"Sample now": the trainer draws the run's sample prompts at the end of its current step (the files
    `runner.SAMPLE_REQUEST` asks for it; one request at a time, a second click before it is served is the same)."""
    from blk.train.runner import SAMPLE_REQUEST

    info = run_info(folder)
    if info.status != "running":
        what = "is starting; ask again once its first step is done" if info.status == "starting" else "is not running"
        return f"{folder.name} {what}. Its checkpoints can be tried in Sketch or Review."
    config = saved_config(folder)
    if config is not None and not config.sampling.prompts:
        return f"{folder.name} has no sample prompts; try its checkpoints in Sketch instead."
    atomic.write_text(folder / SAMPLE_REQUEST, time.strftime("%Y-%m-%d %H:%M:%S\n"))
    return f"Samples of {folder.name} come at the end of its current step (step {info.step + 1})."


def kill_run(folder: Path) -> str:
    pid = _pid(folder)
    if pid is None or not is_running(folder):
        return f"{folder.name} is not running."
    trainers = []
    if _processes(folder) > 1:  # each trainer has a session of its own: find them under the frozen launcher
        import psutil

        try:
            os.kill(pid, signal.SIGSTOP)  # starts no trainer while we look
            trainers = psutil.Process(pid).children(recursive=True)
        except (ProcessLookupError, psutil.Error):
            pass
    try:  # the app starts trainers in a session of their own; one started from a shell may share its group
        os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for trainer in trainers:
        try:
            trainer.kill()
        except psutil.Error:
            pass
    return f"Killed {folder.name}; resume continues from its last checkpoint."


def run_info(folder: Path) -> RunInfo:
    """How a run stands: only the errors of its latest attempt count (one that erred, resumed and finished is
    finished), and steps that a resume went back over count once (`monitor.continuous`). A trainer that has
    said how it ended counts as ended while its process exits; one spawned after the last attempt began is
    starting until it says it started."""
    from blk.train.monitor import continuous, current_attempt
    from blk.train.runner import EventLog

    events = continuous(EventLog(folder / "events.jsonl").read())
    step = max((e["step"] for e in events), default=0)
    statuses = [e["status"] for e in events if e["kind"] == "status"]
    attempt = current_attempt(events)
    errors = [e for e in attempt if e["kind"] == "error"]
    began = bool(attempt) and attempt[0]["kind"] == "status" and attempt[0]["status"] in ("started", "resumed")
    ours = began and attempt[0]["t"] >= _spawned_at(folder)  # the status of the process now running, if any
    ended = [e["status"] for e in attempt if e["kind"] == "status" and e["status"] in ENDED]
    steps = 0
    for name in ("config.yaml", "request.yaml"):
        if (folder / name).exists():
            from blk.train.config import load_config

            try:
                steps = load_config(folder / name).schedule.steps
            except UserError:
                pass
            break
    if is_running(folder):
        status = (ended[-1] if ended else "running") if ours else "starting"
        if status == "starting":  # a resume asked to train longer: its length, before its trainer rewrites config
            steps = _asked_steps(folder) or steps
    elif errors:
        status = "error"
    elif statuses and statuses[-1] in ENDED:
        status = statuses[-1]
    else:
        status = "killed" if (folder / "process.json").exists() else "unknown"
    return RunInfo(folder.name, folder, status, step, steps)


def run_folder(workspace: Workspace, name: str) -> Path:
    """The folder of the run called `name`: a folder directly in the runs folder. A name typed or sent as "..",
    "/etc" or "a/b", or of a run removed since the list was drawn, is a sentence (".." resumed a "run" in the
    workspace root; a removed run's Resume failed on its log file)."""
    folder = workspace.confine(name, base=workspace.runs)
    if folder.parent != workspace.runs.resolve() or not folder.is_dir():
        raise UserError(f"There is no run called {name} in {workspace.runs} (removed? ↻ lists the runs again).")
    return folder


def live_elsewhere(workspace: Workspace, name: str) -> bool:
    """Whether a trainer runs for another run than `name` (cheap: process records only, no events read), so the
    Train tab greys Resume as Start refuses: one run at a time on the GPU."""
    return any(folder.name != name and is_running(folder)
               for folder in workspace.runs.iterdir() if folder.is_dir() and not folder.name.startswith("."))


def list_runs(workspace: Workspace) -> list[RunInfo]:
    folders = sorted((p for p in workspace.runs.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    return [run_info(folder) for folder in folders]


def trainer_log_tail(folder: Path, lines: int = 15) -> str:
    try:
        return "\n".join((folder / "trainer.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# In the runs folder while the app's probe (Estimate) runs: its child's pid, so that no run starts beside it.
PROBE_RECORD = ".probe.json"


def other_family_notice(config: TrainConfig, model: str, workspace: Workspace) -> str:
    """A preset made for one family trained on the other's model (`--model`, or the Train tab's Base model): said, since its family's own values
    (Flux's timestep shift, SDXL's learning rate) were chosen for the other; "" when the same or not known."""
    from blk.models.registry import KNOWN_MODELS, resolve

    def family(name: str) -> str:
        if name in KNOWN_MODELS:
            return KNOWN_MODELS[name].family
        try:
            return resolve(name, workspace, build_tiny=False).family
        except UserError:
            return ""  # the run's own check says what is wrong with it

    made_for, given = family(config.model.name), family(model)
    if not made_for or not given or made_for == given:
        return ""
    names = {"flux": "Flux", "sdxl": "SDXL"}
    return (f"{config.name} was made for {config.model.name} ({names[made_for]}) and now trains {model} "
            f"({names[given]}): its values were chosen for {names[made_for]}; a preset made for {names[given]} "
            f"(presets/) may suit it better.")


def probe_in_child(config: TrainConfig, workspace: Workspace) -> tuple[bool, str]:
    """The pre-run probe in a child process, so the app never holds a model for it: (fits, sentence). While it
    runs, `PROBE_RECORD` names it (`probe_running`); its refusals read as the Train tab's, without the command
    line's "error: "."""
    import tempfile

    record = workspace.runs / PROBE_RECORD
    with tempfile.TemporaryDirectory(prefix="blk-probe-") as scratch:
        request = Path(scratch) / "probe.yaml"
        save_config(config, request)
        child = subprocess.Popen([sys.executable, "-m", "blk", "--workspace", str(workspace.root), "train",
                                  str(request), "--probe"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        ours = {"pid": child.pid, "identity": _identity(child.pid)}
        try:
            with contextlib.suppress(OSError):  # a guard only: an unwritable runs folder refuses the probe itself
                atomic.write_json(record, ours)
            stdout, stderr = child.communicate()
        finally:
            with contextlib.suppress(OSError, ValueError):  # another app's probe may have begun since
                if json.loads(record.read_text()) == ours:
                    record.unlink()
    # a refusal is the last "error: " line on stderr; an estimate (fitting or not) the last line on stdout
    refusals = [line for line in stderr.splitlines() if line.startswith("error: ")]
    lines = refusals or stdout.strip().splitlines() or stderr.strip().splitlines()
    return child.returncode == 0, (lines[-1].removeprefix("error: ") if lines else "The probe ended without a word.")


def probe_running(workspace: Workspace) -> bool:
    """Whether the app's probe runs: a run started beside it shared the GPU with it (either could run out of
    memory, and the probe measured both). A record left by an app that died counts only while its probe lives."""
    try:
        record = json.loads((workspace.runs / PROBE_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and _alive(record)
