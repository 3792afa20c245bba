"""``linguine`` sub-commands. Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int`` (exit code); :mod:`LinGuinELib.cli` imports them and wires them up."""

from __future__ import annotations

import argparse

from LinGuinELib.core.errors import InputError
from LinGuinELib.io.atomic import check_out_dir


def out_folder(text: str) -> str:
    """argparse ``type`` of every ``--out``: refuses, before any work, a path naming an existing file."""
    try:
        check_out_dir(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
