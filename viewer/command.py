"""The `emflow view` command: arguments and handler, importable without the viewer's dependencies."""

from __future__ import annotations

import argparse
import sys
import threading
import webbrowser
from pathlib import Path


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `emflow view`, for the CLI to register with ``handler=view_command``."""
    parser.add_argument("target", metavar="CONFIG|OUTPUT", help="TOML config file of a run, or its output zarr group")
    parser.add_argument("--port", type=int, default=0, help="port of the viewer on 127.0.0.1 (default: any free port)")
    parser.add_argument("--no-browser", action="store_true", help="print the viewer's URL without opening a browser")


def view_command(arguments) -> int:
    """`emflow view`: serve until interrupted (Ctrl-C); the first http:// URL printed is the viewer's."""
    from .serve import serve, sources_from_config, sources_from_output

    target = Path(arguments.target)
    sources = sources_from_output(target) if (target / "zarr.json").is_file() else sources_from_config(target)
    running = serve(sources, port=arguments.port)
    try:
        # Inside the try: Ctrl-C may come as soon as the URL is out.
        print(f"emflow view: {running.url}", flush=True)
        print(f"  serving {sources.output_path} (data from {running.data_url}); Ctrl-C to stop", flush=True)
        if not arguments.no_browser:
            webbrowser.open(running.url)
        threading.Event().wait()
    except KeyboardInterrupt:
        print("emflow view: stopped", file=sys.stderr)
    finally:
        running.stop()
    return 0
