"""`python -m blk …`: every job of the studio without the UI.

    python -m blk models list [--json]
    python -m blk models fetch NAME [--token TOKEN]
    python -m blk dataset check DIR [--model NAME] [--trigger WORD] [--json]

Errors the user can fix print one sentence (exit 2); `dataset check` exits 1
when the dataset holds bad files.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from blk.errors import UserError
from blk.workspace import Workspace


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blk", description="BLK Studio engine")
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
    check.add_argument("--trigger", default=None, help="trigger word every caption should contain")
    check.add_argument("--json", action="store_true")
    check.set_defaults(run=cmd_dataset_check)
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


def resolve_dataset_dir(value: str, workspace: Workspace) -> Path:
    named = workspace.datasets / value
    path = named if ("/" not in value and named.is_dir()) else Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"{value} is not a folder (nor a dataset in {workspace.datasets}).")
    return path.resolve()


def cmd_dataset_check(args, workspace: Workspace) -> int:
    from blk.data.check import check_for_model

    report = check_for_model(resolve_dataset_dir(args.dir, workspace), workspace, args.model, args.trigger)
    print(report.to_json() if args.json else report.to_text())
    return 1 if report.bad_files else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        workspace = Workspace(args.workspace)
        return args.run(args, workspace)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped.", file=sys.stderr)
        return 130
