"""Start BLK Studio: a private, local Gradio app on 127.0.0.1.

    python3 studio.py [--workspace DIR] [--port N] [--demo] [--listen ADDR --auth USER:PASS|FILE]

(`studio.py` prepares the environment, then runs this file.) Importing `blk`
first makes the process offline before gradio or huggingface_hub read their
settings. Heavy libraries (torch, diffusers) load later, when a job needs them.
"""

import blk  # noqa: F401  (must stay first: sets the offline environment)

import argparse
import atexit
import ipaddress
import signal
import sys
from pathlib import Path

from blk.errors import UserError

MAX_UPLOAD = "500mb"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="studio.py", description="BLK Studio — local, offline, private.",
        epilog="Other words: studio.py test [PYTEST ARGS] runs the tests; studio.py setup-vllm installs the vLLM "
               "captioning server; studio.py [--workspace DIR] COMMAND … runs a job from the command line "
               "(models, dataset, train, caption, sketch, review, upscale, stencil; COMMAND --help lists its options).")
    parser.add_argument("--workspace", default="workspace", help="where datasets, runs, outputs and models live")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--listen", default="127.0.0.1",
                        help="address to bind; anything beyond loopback requires --auth")
    parser.add_argument("--auth", default=None, help="USER:PASSWORD, or a file with one USER:PASSWORD per line")
    parser.add_argument("--demo", action="store_true", help="use the tiny random-weight models even if real ones exist")
    return parser.parse_args(argv)


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def read_auth(value: str | None) -> list[tuple[str, str]] | None:
    """Credentials from 'user:password' or from a file of such lines."""
    if not value:
        return None
    path = Path(value).expanduser()
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else [value]
    pairs = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise UserError("--auth needs USER:PASSWORD (or a file of such lines); the password may not be empty.")
        pairs.append((user, password))
    if not pairs:
        raise UserError(f"{value} holds no USER:PASSWORD line.")
    return pairs


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        auth = read_auth(args.auth)
        if not is_loopback(args.listen) and not auth:
            raise UserError(f"Listening on {args.listen} would expose the studio beyond this machine; "
                            "add --auth USER:PASSWORD (or a file) to allow it.")
        from blk.models.registry import default_model
        from blk.workspace import Workspace

        workspace = Workspace(args.workspace)
        _, no_real_model = default_model(workspace)
        demo_reason = "started with --demo." if args.demo else "no real model was found on this machine."
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from ui.app import build_app
    from ui.context import StudioContext
    from ui.theme import CSS, HEAD, screen_reader_words, studio_theme

    context = StudioContext(workspace, demo=args.demo or no_real_model, demo_reason=demo_reason)
    atexit.register(context.close)  # stop the captioning server with the app
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that atexit runs on a plain kill too
    app = build_app(context)
    app.queue(default_concurrency_limit=1)
    app.launch(
        server_name=args.listen, server_port=args.port, share=False, ssr_mode=False, auth=auth,
        theme=studio_theme(), css=CSS, head=HEAD, i18n=screen_reader_words(), inbrowser=False, show_error=True,
        max_file_size=MAX_UPLOAD,
        allowed_paths=[str(workspace.root)],
        app_kwargs={"openapi_url": None, "docs_url": None, "redoc_url": None},  # nothing answers without auth
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
