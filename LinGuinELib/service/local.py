"""A local engine service as a child process: started without blocking, polled until ready, stopped
(terminate, then kill) with its whole process group. Used by the Slicer module (with Slicer's
``PythonSlicer`` launcher as ``python``) and by :class:`~LinGuinELib.frontend.engine.EngineConnection`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from LinGuinELib.core.errors import LinGuinEError


class LocalService:
    """``python -m LinGuinELib serve`` on 127.0.0.1 with a fresh random token (a 0600 file in a private
    temporary folder) and a free port, reported through a ready file the service writes once listening."""

    def __init__(self, python: str = sys.executable, extra_args=(), env: dict | None = None):
        self.python = python
        self.extra_args = tuple(extra_args)
        self.env = env
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self.token: str | None = None
        self._dir: Path | None = None
        self._log = None

    @property
    def log_path(self) -> Path | None:
        """The service's stderr log of the current start."""
        return self._dir / "service.log" if self._dir else None

    def start(self) -> None:
        """Spawn the service in its own process group and return at once (see :meth:`ready`)."""
        if self.alive():
            return
        self._cleanup()
        self._dir = Path(tempfile.mkdtemp(prefix="linguine-service-"))  # mode 0700
        self.url = self.token = None
        self._log = open(self.log_path, "wb")
        command = [self.python, "-m", "LinGuinELib", "serve", "--host", "127.0.0.1", "--port", "0",
                   "--token-file", str(self._dir / "token"), "--ready-file", str(self._dir / "ready.json"),
                   *self.extra_args]
        env = dict(os.environ if self.env is None else self.env)
        env.pop("LINGUINE_TOKEN", None)  # a fresh token per start, from the token file
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        """Non-blocking: True once the service wrote its ready file and answers health (1 s timeout).
        Raises :class:`LinGuinEError` with the end of its log if the process has exited."""
        if self.process is None:
            return False
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-1500:] if self.log_path and self.log_path.exists() else ""
            raise LinGuinEError(f"the local engine service exited with code {self.process.returncode}: "
                                f"{tail.strip() or 'no output'}")
        ready = self._dir / "ready.json"
        if not ready.exists():
            return False
        if self.url is None:
            self.url = json.loads(ready.read_text())["url"]
            self.token = (self._dir / "token").read_text().strip()
        from LinGuinELib.service.client import EngineClient, ServiceError

        try:
            EngineClient(self.url, self.token, timeout_s=1.0).health()
            return True
        except ServiceError:
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until :meth:`ready` (CLI and tests only)."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise LinGuinEError(f"the local engine service did not start within {timeout_s:g} s")
            time.sleep(0.05)

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM the service's process group, SIGKILL it after ``grace_s``; removes the token file."""
        if self.process is not None and self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._cleanup()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.url = self.token = None
