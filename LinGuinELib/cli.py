"""The ``linguine`` command line: one sub-command per module in :mod:`LinGuinELib.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from LinGuinELib import __version__
from LinGuinELib.core.errors import LinGuinEError, TrackingCancelled

COMMANDS = ("track", "batch", "evaluate", "demo", "info", "export_seg", "synth", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linguine",
        description="LinGuinE: track a tumour through a patient's longitudinal CT scans "
                    "(registration-guided point-prompted segmentation). Points are LPS mm unless stated.")
    parser.add_argument("--version", action="version", version=f"linguine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMANDS:
        module = importlib.import_module(f"{__package__}.commands.{module_name}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except TrackingCancelled as exc:
        print(f"linguine: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("linguine: interrupted; no partial output was written", file=sys.stderr)
        return 130
    except LinGuinEError as exc:
        print(f"linguine: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
