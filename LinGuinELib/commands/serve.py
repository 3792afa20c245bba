"""``linguine serve``: the engine service for Slicer, the CLI (``track --server``) and a team's GPU server."""

from __future__ import annotations

import argparse

from LinGuinELib.core.errors import InputError

NAME = "serve"
HELP = "Run the engine service (HTTP, bearer token) that Slicer and `linguine track --server` talk to."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other needs a token, TLS advised)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = a free port)")
    parser.add_argument("--token-file", help="bearer token file: read if it exists, else created (mode 0600) "
                                             "with a random token ($LINGUINE_TOKEN overrides)")
    parser.add_argument("--tls-cert", help="TLS certificate (PEM) for https")
    parser.add_argument("--tls-key", help="TLS private key (PEM) for https")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N for every job")
    parser.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest request body (default 2048 MB)")
    parser.add_argument("--max-memory-gb", type=float, default=16.0,
                        help="scans and results kept in memory; least recently used go first (default 16 GB)")
    parser.add_argument("--idle-timeout-s", type=float, default=3600.0,
                        help="close study sessions unused this long (default 3600 s)")
    parser.add_argument("--ready-file", help=argparse.SUPPRESS)  # written by the service for LocalService


def run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise InputError("the engine service needs FastAPI and uvicorn: pip install 'linguine[serve]'") from None
    from LinGuinELib.service.server import run as serve

    for name in ("max_upload_mb", "max_memory_gb", "idle_timeout_s"):
        if not getattr(args, name) > 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, not {getattr(args, name)}")
    serve(host=args.host, port=args.port, token_file=args.token_file, tls_cert=args.tls_cert, tls_key=args.tls_key,
          device=args.device, max_upload_mb=args.max_upload_mb, max_memory_gb=args.max_memory_gb,
          idle_timeout_s=args.idle_timeout_s, ready_file=args.ready_file)
    return 0
