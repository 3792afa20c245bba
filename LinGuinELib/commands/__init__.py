"""``linguine`` sub-commands. Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int`` (exit code); :mod:`LinGuinELib.cli` imports them and wires them up."""
