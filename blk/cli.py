"""`python -m blk …`: every job of the studio without the UI.

    python -m blk models list [--json]
    python -m blk models fetch NAME [--token TOKEN]
    python -m blk dataset check DIR [--model NAME] [--trigger WORD] [--json]
    python -m blk train CONFIG.yaml [--model NAME] [--dataset DIR] [--steps N] [--run-dir DIR] [--resume RUN_DIR]
                                 [--gpus N]
    python -m blk caption DATASET [--style FILE] [--vllm-url URL | --vllm-model PATH_OR_NAME]
                                  [--backend vllm|transformers] [--only-missing | --all] [--overwrite] [--json]
    python -m blk sketch …   and   python -m blk review …   (see blk/generate/cli.py)
    python -m blk stencil generate | alpha | compose …      (see blk/stencil/cli.py)

Errors the user can fix print one sentence (exit 2); `dataset check` exits 1
when the dataset holds bad files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict

from blk.cli_types import whole
from blk.errors import UserError
from blk.workspace import Workspace


class OneLineParser(argparse.ArgumentParser):
    """A command line the parser refuses is one line, as every other refusal (argparse printed its whole usage
    block above the sentence that mattered); the line says where the options are listed, for the command that
    refused: an unknown option is refused by its subcommand (argparse left them to the top parser, whose help
    lists no options of `upscale`). Subcommands' parsers are of this class too (argparse makes them of their
    parent's)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the options)\n")

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    # the launcher (`python3 studio.py upscale …`) names itself, so that help and refusals say what was typed
    parser = OneLineParser(prog=os.environ.get("BLK_CLI_NAME") or "python -m blk", description="BLK Studio engine")
    parser.add_argument("--workspace", default="workspace", help="workspace folder (default ./workspace)")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list or fetch models").add_subparsers(dest="action", required=True)
    listing = models.add_parser("list", help="known and registered models, found or missing")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_models_list)
    fetch = models.add_parser("fetch", help="download a model into the local Hugging Face cache (networked)")
    fetch.add_argument("name")
    fetch.add_argument("--token", default=None, help="Hugging Face token for gated models (default: your login)")
    fetch.set_defaults(run=cmd_models_fetch)

    dataset = commands.add_parser("dataset", help="dataset tools").add_subparsers(dest="action", required=True)
    check = dataset.add_parser("check", help="lint a dataset folder before training")
    check.add_argument("dir", help="a dataset folder, or the name of one under workspace/datasets")
    check.add_argument("--model", default=None, help="model whose tokenizers count caption tokens (default: first found)")
    check.add_argument("--trigger", default=None,
                       help="trigger word every caption should contain (default: the caption style's)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(run=cmd_dataset_check)

    train = commands.add_parser("train", help="train a LoRA (a child process of the app, or on its own)")
    train.add_argument("config", nargs="?", default=None, help="a preset or run config YAML")
    train.add_argument("--model", default=None)
    train.add_argument("--dataset", default=None)
    train.add_argument("--steps", type=whole(1), default=None)
    train.add_argument("--run-dir", default=None, help="default: workspace/runs/NAME-DATE")
    train.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    train.add_argument("--gpus", type=whole(1), default=None, metavar="N",
                       help="data-parallel processes, one per GPU (default: schedule.gpus); a resume may change it "
                            "when N divides gpus × gradient accumulation: the steps stay the same")
    train.add_argument("--probe", action="store_true", help="estimate s/step, time and peak memory; train nothing")
    train.set_defaults(run=cmd_train)

    caption = commands.add_parser("caption", help="caption a dataset with a vision-language model (few-shot)")
    caption.add_argument("dataset", help="a dataset folder, or the name of one under workspace/datasets")
    caption.add_argument("--style", default=None, help="caption style YAML (default: the dataset's own)")
    source = caption.add_mutually_exclusive_group()
    source.add_argument("--vllm-url", default=None, help="an OpenAI-compatible server already running")
    source.add_argument("--vllm-model", default=None,
                        help="the captioning model (a folder, or a repo in the local Hugging Face cache) for the "
                             "server the studio starts, or for --backend transformers; tiny-vlm writes random words")
    caption.add_argument("--backend", choices=["vllm", "transformers"], default="vllm")
    which = caption.add_mutually_exclusive_group()
    which.add_argument("--only-missing", dest="mode", action="store_const", const="missing", help="(default)")
    which.add_argument("--all", dest="mode", action="store_const", const="all",
                       help="also re-caption machine captions")
    caption.add_argument("--overwrite", action="store_true", help="also replace captions a person edited or approved")
    caption.add_argument("--concurrency", type=whole(1, 256), default=8)
    caption.add_argument("--ignore-eos", action="store_true", help=argparse.SUPPRESS)
    caption.add_argument("--json", action="store_true")
    caption.set_defaults(run=cmd_caption, mode="missing")

    from blk.generate.cli import add_commands as add_generate_commands
    from blk.stencil.cli import add_commands as add_stencil_commands
    from blk.upscale.cli import add_commands as add_upscale_commands

    add_generate_commands(commands)  # sketch, review
    add_upscale_commands(commands)
    add_stencil_commands(commands)  # stencil generate | alpha | compose
    return parser


def cmd_models_list(args, workspace: Workspace) -> int:
    from blk.models.registry import human_size, list_models

    rows = list_models(workspace)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print(f"{'name':<14} {'family':<6} {'size':>9}  where")
    for r in rows:
        print(f"{r.name:<14} {r.family:<6} {human_size(r.size_bytes) or '-':>9}  {r.location}")
    return 0


def cmd_models_fetch(args, workspace: Workspace) -> int:
    from blk.models.fetch import fetch

    path = fetch(args.name, token=args.token)
    print(f"{args.name} is ready at {path}")
    return 0


def cmd_dataset_check(args, workspace: Workspace) -> int:
    from blk.data.check import check_for_model

    report = check_for_model(workspace.dataset_folder(args.dir), workspace, args.model, args.trigger)
    print(report.to_json() if args.json else report.to_text())
    return 1 if report.bad_files or not report.images else 0


def cmd_train(args, workspace: Workspace) -> int:
    """Train, resume or probe. A trainer takes its stop signals before its imports and config (`main` takes them
    before it builds the parser, here if it did not): taken after them, a Stop in the run's first instant killed
    it, and the Train tab showed the run as "killed" at step 0 with nothing said. (A probe keeps the defaults.)"""
    if args.probe or getattr(args, "stop", None) is not None:
        return _train_command(args, workspace, getattr(args, "stop", None))
    with stop_on_signals() as stop:
        return _train_command(args, workspace, stop)


def _train_command(args, workspace: Workspace, stop) -> int:
    import time
    from pathlib import Path

    from blk.train import distributed
    from blk.train.config import TrainConfig, load_config
    from blk.train.process import record_command_line_trainer, refuse_a_live_run
    from blk.train.runner import record_refusal, run

    if args.resume:
        run_dir = Path(args.resume)
        if not args.probe and distributed.is_main_process():
            refuse_a_live_run(run_dir)
        # a run stopped before the trainer wrote its config.yaml (in its first seconds) holds only the Train tab's
        # request: it starts again from step 0 in the same folder, as one stopped before its first checkpoint does
        resolved, requested = run_dir / "config.yaml", run_dir / "request.yaml"
        if not run_dir.is_dir() or not (resolved.is_file() or requested.is_file()):  # read "config.yaml cannot be read"
            raise UserError(f"{run_dir} is not a training run's folder (it has no config.yaml); --resume takes a "
                            f"folder under {workspace.runs}.")
        try:
            saved = load_config(requested if requested.is_file() and not resolved.exists() else resolved)
        except UserError as exc:  # e.g. a config.yaml edited by hand: said where the Train tab looks, not only here
            if not args.probe:
                record_refusal(run_dir, exc)
            raise
        if args.model and args.model != saved.model.name:  # its adapter, optimizer and caches are that model's
            raise UserError(f"{run_dir.name} was trained on {saved.model.name} and resumes only on it: leave out "
                            f"--model, or start a new run on {args.model}.")
        config = _regrouped(saved, run_dir, args.gpus, save=not args.probe)
    else:
        config = load_config(args.config) if args.config else TrainConfig()
        run_dir = Path(args.run_dir) if args.run_dir else \
            workspace.runs / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not args.probe:  # under a launcher, every process checks before any joins the group (and writes)
            refuse_a_run_folder(run_dir)
        if args.gpus:
            config.schedule.gpus = args.gpus
    if args.model:
        from blk.train.process import other_family_notice

        # a preset's (not the defaults' tiny-flux): `--model sdxl` alone was told it trains a Flux preset
        if args.config and (notice := other_family_notice(config, args.model, workspace)):
            print(f"notice: {notice}", file=sys.stderr, flush=True)
        config.model.name = args.model
    if args.dataset:
        config.data.dataset = args.dataset
    if args.steps and args.resume:  # a longer run from where it is: its stages stay where they were
        from blk.train.process import resume_target_problem, run_info, shortened_sentence
        from blk.train.runner import saved_step

        info = run_info(run_dir)  # its events may go past its last checkpoint, where the resume starts (a kill)
        if problem := resume_target_problem(run_dir.name, saved_step(run_dir), info.status == "finished",
                                            saved.schedule.steps, args.steps, "--steps", logged=info.step):
            raise UserError(problem)
        if shortened := shortened_sentence(config, args.steps):
            print(f"notice: {shortened}", file=sys.stderr, flush=True)
        config.schedule.steps = args.steps
    elif args.steps:  # a new run: stage starts and warmup scale with the steps, as the Train tab's Steps does
        config = config.with_steps(args.steps)
    if args.probe:
        from blk.train.probe import probe

        estimate = probe(config, workspace)
        print(estimate.sentence(config.schedule.steps))
        return 0 if estimate.fits else 1
    if distributed.launched() and not (args.run_dir or args.resume):
        raise UserError("Under accelerate launch every process must train the same run: name its folder with --run-dir.")
    if config.schedule.gpus > 1 and not distributed.launched():
        return _train_on_several_gpus(args, workspace, config.schedule.gpus, run_dir, stopped=stop.is_set())
    world = distributed.World.from_env()

    def record() -> None:  # once the folder exists: a run refused before it leaves no folder behind
        launcher = os.getppid() if distributed.launched() else None  # under `accelerate launch`: the launcher
        record_command_line_trainer(run_dir, world.size if launcher else 1, pid=launcher)

    result = run(config, workspace, run_dir, resume=bool(args.resume), stop=stop,  # a failure is an error event
                 on_folder=record)
    if distributed.is_main_process():
        if result.status == "error":  # why, here too: it was only in events.jsonl (a NaN, out of memory)
            from blk.train.runner import EventLog

            errors = [e for e in EventLog(result.run_dir / "events.jsonl").read() if e.get("kind") == "error"]
            if errors:
                print(f"error: {errors[-1].get('message', '')}", file=sys.stderr)
        print(f"{result.status} at step {result.step}: {result.run_dir}")
    return 0 if result.status != "error" else 1


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM (the Train tab's Stop) and SIGINT (Ctrl-C) set the event it yields: the trainer finishes its step,
    saves a checkpoint and ends. The handlers before are put back after (a caller in-process keeps its own)."""
    import signal
    import threading

    stop = threading.Event()
    before = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for signum, handler in before.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: one set outside Python


def refuse_a_run_folder(run_dir) -> None:
    """A new run never goes into a folder that holds one: training over it replaced its config, events, state
    and samples, and left its later checkpoints beside the new run's. Nor into a file."""
    from pathlib import Path

    from blk.workspace import check_writable_folder

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a folder for a run.")
    if (run_dir / "config.yaml").exists() or (run_dir / "events.jsonl").exists():
        raise UserError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or name a new "
                        "folder with --run-dir.")
    check_writable_folder(run_dir)


def _regrouped(config, run_dir, asked: int | None, save: bool = True):
    """The resumed run's config on the GPUs it resumes on (`--gpus`, the processes the launcher started, or as many
    as this machine allows), saved to its config.yaml (atomically) when that changes, so that the processes this
    command launches, and any later resume, read the new grouping."""
    from blk.train import distributed
    from blk.train.config import save_config
    from blk.train.process import check_gpus, regroup, resume_gpus

    gpus = distributed.World.from_env().size if distributed.launched() else resume_gpus(config, asked)
    config, sentence = regroup(config, gpus)
    if sentence and save and distributed.is_main_process():
        check_gpus(gpus)  # before the run folder changes
        save_config(config, run_dir / "config.yaml")
        print(sentence, flush=True)
    return config


def _train_on_several_gpus(args, workspace: Workspace, gpus: int, run_dir, stopped: bool = False) -> int:
    """This same command under `accelerate launch`, one trainer process per GPU, in the foreground; Ctrl-C
    (or SIGTERM) reaches the trainers, which save the current step and end together. `stopped`: one came before
    the launch, and is passed on as one after it would be."""
    import signal
    import subprocess
    from pathlib import Path

    from blk.train.process import RECORDED, check_gpus, refuse_a_live_run, stop_trainers, train_command, train_environment

    check_gpus(gpus)
    if args.resume:
        refuse_a_live_run(Path(args.resume))
    # the app records the launcher it started; from a shell, the trainers' rank 0 records this launcher
    recorded = os.environ.get(RECORDED) == "1"
    forwarded = ["--resume", args.resume] if args.resume else \
        [*([args.config] if args.config else []), "--run-dir", str(run_dir)]  # one folder for every process
    for flag, value in (("--model", args.model), ("--dataset", args.dataset), ("--steps", args.steps),
                        ("--gpus", gpus)):
        if value:
            forwarded += [flag, str(value)]
    command = train_command(workspace, forwarded, gpus)
    process = subprocess.Popen(command, env=train_environment(recorded=recorded),
                               start_new_session=True)  # Ctrl-C reaches this process alone, which passes it on
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_trainers(process.pid, gpus))
    if stopped:
        stop_trainers(process.pid, gpus)
    return process.wait()


def cmd_caption(args, workspace: Workspace) -> int:
    from blk.caption.job import NO_CAPTIONER, CaptionJob, run

    if not args.vllm_model and args.backend == "transformers":
        raise UserError(f"{NO_CAPTIONER} Name it with --vllm-model (the transformers backend runs it here).")
    if not args.vllm_model and not args.vllm_url:
        raise UserError(f"{NO_CAPTIONER} Name it with --vllm-model, or give --vllm-url of a server you run.")
    named = {"model": args.vllm_model} if args.vllm_model else {}  # a running server has its own
    job = CaptionJob(dataset=args.dataset, style=args.style, backend=args.backend, vllm_url=args.vllm_url,
                     **named, mode=args.mode, overwrite=args.overwrite,
                     concurrency=args.concurrency, ignore_eos=args.ignore_eos)

    def progress(p):
        if not args.json:
            eta = f", about {p.eta_seconds:.0f} s left" if p.eta_seconds is not None else ""
            print(f"\r{p.done}/{p.total} captioned, {p.images_per_second:.2f} images/s{eta}   ",
                  end="", file=sys.stderr, flush=True)

    result = run(job, workspace, progress)
    if args.json:
        print(json.dumps(asdict(result) | {"images_per_second": result.images_per_second}, indent=2))
    else:
        print(file=sys.stderr)
        print(f"captioned {len(result.captioned)}, skipped {len(result.skipped)}, failed {len(result.failed)} "
              f"in {result.seconds:.1f} s ({result.images_per_second:.2f} images/s)")
        for rel, reason in result.failed:
            print(f"  failed: {reason}")
        if result.stopped_because:
            print(f"stopped early: {result.stopped_because} Run again to caption the rest.")
    return 1 if result.failed or result.stopped_because else 0


def main(argv: list[str] | None = None) -> int:
    quiet_library_advice()
    argv = sys.argv[1:] if argv is None else list(argv)
    # a trainer's stop signals, before the parser's imports (a third of a second; see cmd_train)
    with stop_on_signals() if _trains(argv) else contextlib.nullcontext() as stop:
        return _command(argv, stop)


def _command(argv: list[str], stop) -> int:
    args = build_parser().parse_args(argv)
    args.stop = stop  # a trainer's, taken already (None for other commands)
    try:
        workspace = Workspace(args.workspace)
        return args.run(args, workspace)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped.", file=sys.stderr)
        return 130
    except (OSError, ValueError, OverflowError) as exc:  # a path or a number the checks did not foresee
        if os.environ.get("BLK_TRACEBACK"):
            raise
        print(f"error: {unforeseen_sentence(exc)}", file=sys.stderr)
        return 2


def _trains(argv: list[str]) -> bool:
    """Whether the command line is `[--workspace W] train …` without --probe, read without the parser."""
    words = list(argv)
    while words and words[0].startswith("--workspace"):
        words = words[1 if "=" in words[0] else 2:]
    return bool(words) and words[0] == "train" and "--probe" not in words


def quiet_library_advice() -> None:
    """A command's output is its progress and its result: the libraries' advice to their own developers
    ("modules that should be kept in float32", peft's "Make sure to know what you are doing!", "No CUDA
    runtime is found") cluttered it around the one sentence that mattered. Their errors still show."""
    import logging
    import warnings

    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")


def unforeseen_sentence(exc: BaseException) -> str:
    """One sentence for a failure no check caught: a folder that cannot be written, a file where a folder was
    expected, a number out of every range. (`BLK_TRACEBACK=1` shows the traceback instead.)"""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {(exc.strerror or str(exc)).rstrip('.')}."
    if isinstance(exc, OSError):
        return f"{(exc.strerror or str(exc)).rstrip('.')}."
    first = (str(exc).strip().splitlines() or [""])[0].rstrip(".")
    return f"this failed: {first or type(exc).__name__} ({type(exc).__name__}; BLK_TRACEBACK=1 shows where)."
