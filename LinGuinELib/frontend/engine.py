"""The Qt-free engine driver of the Slicer module: no threads, no blocking call longer than a short
timeout, so the widget can call :meth:`EngineConnection.poll` and :meth:`EngineConnection.tick` from a
QTimer.

* ``mode="local"``: a :class:`~LinGuinELib.service.local.LocalService` started on first use and kept for
  the Slicer session; ``mode="remote"``: the service at ``url`` with ``token`` (a team GPU server).
* Cancel rule: ask the service to cancel; if a LOCAL service has not finished the job within
  ``cancel_grace_s`` (2 s), restart it (the job is then reported cancelled).
"""

from __future__ import annotations

import sys
import time

from LinGuinELib.core.errors import InputError, LinGuinEError
from LinGuinELib.service.client import EngineClient, JobStatus, RequestRefused, ServiceError
from LinGuinELib.service.local import LocalService

IDLE, STARTING, READY, FAILED = "idle", "starting", "ready", "failed"


class EngineConnection:
    """State machine idle -> starting -> ready (or failed, with :attr:`error`) around one service."""

    def __init__(self, mode: str = "local", url: str | None = None, token: str | None = None,
                 python: str = sys.executable, extra_args=(), env: dict | None = None, start_timeout_s: float = 120.0,
                 poll_timeout_s: float = 0.5, cancel_grace_s: float = 2.0):
        if mode not in ("local", "remote"):
            raise InputError(f"engine mode must be 'local' or 'remote', not {mode!r}")
        if mode == "remote" and not (url and token):
            raise InputError("a remote engine needs its URL and token")
        self.mode, self.url, self.token = mode, url, token
        self.service = LocalService(python, extra_args, env) if mode == "local" else None
        self.start_timeout_s, self.poll_timeout_s, self.cancel_grace_s = start_timeout_s, poll_timeout_s, cancel_grace_s
        self.state, self.error = IDLE, ""
        self._client: EngineClient | None = None
        self._started = 0.0
        self._jobs: dict[str, JobStatus] = {}
        self._cancels: dict[str, float] = {}  # job id -> when cancel was asked
        self._sessions: dict[int, tuple] = {}  # id(study) -> (study, session id)
        self.restarts = 0

    # -- connection ---------------------------------------------------------------------------------
    def poll(self) -> str:
        """Advance the start/health state machine without blocking; returns the state."""
        try:
            if self.state == IDLE:
                self._started = time.monotonic()
                if self.service is not None:
                    self.service.start()
                    self.state = STARTING
                else:
                    client = EngineClient(self.url, self.token, timeout_s=30.0)
                    client.health(timeout_s=self.poll_timeout_s)
                    self._client, self.state = client, READY
            elif self.state == STARTING:
                if self.service.ready():
                    self._client = EngineClient(self.service.url, self.service.token, timeout_s=30.0)
                    self.state = READY
                elif time.monotonic() - self._started > self.start_timeout_s:
                    raise LinGuinEError(f"the local engine service did not start within {self.start_timeout_s:g} s "
                                        f"(log: {self.service.log_path})")
            elif self.state == READY and self.service is not None and not self.service.alive():
                raise LinGuinEError("the local engine service stopped; it restarts at the next request")
        except LinGuinEError as exc:
            self.state, self.error, self._client = FAILED, str(exc), None
        return self.state

    def reset(self) -> None:
        """After a failure: start (or reconnect) again at the next :meth:`poll`."""
        self._sessions.clear()
        if self.service is not None:
            self.service.stop()
        self.state, self.error, self._client = IDLE, "", None

    @property
    def client(self) -> EngineClient:
        if self.state != READY or self._client is None:
            raise LinGuinEError(f"the engine is not ready ({self.state}{': ' + self.error if self.error else ''})")
        return self._client

    # -- jobs ---------------------------------------------------------------------------------------
    def session_for(self, study) -> str:
        """The service's session id for this Study object (opened, and its missing scans uploaded, on
        first use: this call blocks for the upload of new scans)."""
        key = id(study)
        if key not in self._sessions or self._sessions[key][0] is not study:
            self._sessions[key] = (study, self.client.open_study(study))
        return self._sessions[key][1]

    def _submit(self, study, call) -> str:
        try:
            job_id = call(self.session_for(study))
        except RequestRefused as exc:
            if exc.status != 404:
                raise
            self._sessions.pop(id(study), None)  # the session expired: open it again, once
            job_id = call(self.session_for(study))
        return self.follow(job_id)

    def submit(self, study, prompts, settings) -> str:
        """Queue tracking of ``prompts`` (LesionPrompt: LPS click or mask) on ``study`` -> job id (followed
        by :meth:`tick`). Re-tracking from a corrected timepoint = a mask prompt on that timepoint."""
        return self._submit(study, lambda sid: self.client.submit_track(sid, prompts, settings))

    def submit_correct(self, study, lesion_id, scan_id, positive_lps, negative_lps, settings, current) -> str:
        """Queue correction clicks (LPS mm) on one timepoint given its ``current`` Observation -> job id."""
        return self._submit(study, lambda sid: self.client.submit_correct(sid, lesion_id, scan_id, positive_lps,
                                                                          negative_lps, settings, current))

    def follow(self, job_id: str) -> str:
        """Follow a job submitted directly through :attr:`client` in :meth:`tick`."""
        self._jobs[job_id] = JobStatus(job_id, "queued", "queued")
        return job_id

    def result(self, job_id: str):
        """A done job's TrackingResult (on the caller's Study object) or Observation."""
        return self.client.job_result(job_id)

    def tick(self) -> dict[str, JobStatus]:
        """The latest status of every followed job (short-timeout calls; a job that reached a final state
        is reported once more, then dropped). Applies the cancel rule."""
        out = {}
        for job_id in list(self._jobs):
            try:
                status = self.client.job_status(job_id, timeout_s=self.poll_timeout_s)
            except ServiceError as exc:
                status = self._unanswered(job_id, str(exc))
            except LinGuinEError as exc:
                status = JobStatus(job_id, "failed", str(exc))
            if job_id in self._cancels and not status.finished and self.service is not None \
                    and time.monotonic() - self._cancels[job_id] > self.cancel_grace_s:
                self._restart()
                status = JobStatus(job_id, "cancelled", "cancelled (the local engine service was restarted)")
            out[job_id] = status
            self._jobs[job_id] = status
            if status.finished:
                self._jobs.pop(job_id, None)
                self._cancels.pop(job_id, None)
        return out

    def _unanswered(self, job_id: str, message: str) -> JobStatus:
        if self.service is not None and not self.service.alive():
            self.state, self.error, self._client = FAILED, "the local engine service stopped", None
            return JobStatus(job_id, "failed", f"the local engine service stopped during the job ({message})")
        if job_id in self._cancels:
            return JobStatus(job_id, "running", "cancelling")
        return self._jobs.get(job_id) or JobStatus(job_id, "running", "waiting for the engine service")

    def cancel(self, job_id: str) -> None:
        """Ask the service to cancel (short timeout); the restart rule is applied by :meth:`tick`."""
        self._cancels[job_id] = time.monotonic()
        try:
            self.client.cancel(job_id, timeout_s=self.poll_timeout_s)
        except LinGuinEError:
            pass  # an unanswered cancel is what the restart rule is for

    def _restart(self) -> None:
        self.restarts += 1
        self._sessions.clear()
        self.service.restart()
        self.state, self._client, self._started = STARTING, None, time.monotonic()
        for job_id in list(self._jobs):
            self._jobs.pop(job_id)
            self._cancels.pop(job_id, None)

    def shutdown(self) -> None:
        """Stop a local service (terminate, then kill); forget every job."""
        self._jobs.clear()
        self._cancels.clear()
        self._sessions.clear()
        if self.service is not None:
            self.service.stop()
        self.state, self._client = IDLE, None
