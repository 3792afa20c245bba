"""Engine jobs driven from the scene: submit to the engine service, poll from a timer, apply on completion.

Nothing here blocks or starts a thread: :meth:`EngineJobs.tick` is called from a QTimer (every ~150 ms)
and makes only short-timeout calls. A result is applied to the session and the scene on the main thread
when its job is done; a failed, cancelled or crashed job (or one whose result cannot be applied) leaves
the session and the scene as they were.

``connection`` is :class:`LinGuinELib.frontend.engine.EngineConnection` (or an object of the same
shape): ``poll()`` -> "idle" | "starting" | "ready" | "failed" (with ``error``), ``reset()``, ``client``
(an :class:`LinGuinELib.service.client.EngineClient`), ``submit(job_id)`` to follow a job, ``tick()`` ->
{job id: JobStatus} (short-timeout calls; applies the cancel-then-restart rule), ``cancel(job_id)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from LinGuinELib.core import coords
from LinGuinELib.core.errors import InputError
from LinGuinELib.core.tracking import LesionPrompt


@dataclass
class JobOutcome:
    """How the last job ended: ok, message for the user, and what changed (lesion id, timepoint)."""

    ok: bool
    message: str
    lesion_id: int | None = None
    scan_id: str | None = None


@dataclass
class _Job:
    kind: str  # "track" | "correct"
    submit: Callable[[object, str], str]  # (client, session id) -> job id
    apply: Callable[[object], None]  # (result) -> None, raises to roll back
    lesion_id: int | None
    scan_id: str | None
    job_id: str | None = None


class EngineJobs:
    def __init__(self, timepoints, results, connection):
        self.timepoints, self.results, self.connection = timepoints, results, connection
        self.job: _Job | None = None
        self.progress = ("", 0.0)  # (text, fraction 0..1) of the running job
        self.outcome: JobOutcome | None = None
        self._remote = None  # (local TrackingSession, service session id)
        self._uploads = None  # (local TrackingSession, {scan_id: hash}) while its scans are being uploaded
        self._cancelling = False

    @property
    def busy(self) -> bool:
        return self.job is not None

    # -- submitting ---------------------------------------------------------------------------------
    def track(self, prompts: list[LesionPrompt], settings, overwrite_edits: bool = False) -> None:
        """Track new lesions (or re-track one) from ``prompts`` on every timepoint."""
        session = self.timepoints.session
        if not prompts:
            raise InputError("no lesion prompt given")

        def apply(result):
            state = session.checkpoint()
            try:
                session.merge(result, overwrite_edits=overwrite_edits)
                self.results.apply()
            except Exception:
                session.rollback(state)
                raise

        self._start(_Job("track", lambda client, sid: client.submit_track(sid, prompts, settings), apply,
                         prompts[0].lesion.lesion_id, prompts[0].scan_id))

    def retrack(self, lesion_id: int, scan_id: str, settings, overwrite_edits: bool = False) -> None:
        """Track ``lesion_id`` again with its current (e.g. corrected) segment on ``scan_id`` as the source."""
        session = self.timepoints.session
        obs = session.observation(lesion_id, scan_id)
        if not obs.found:
            raise InputError(f"{session.lesion(lesion_id).name} has no segment on '{scan_id}' to re-track from")
        self.track([LesionPrompt(session.lesion(lesion_id), scan_id, mask=obs.mask.copy())], settings, overwrite_edits)

    def correct(self, lesion_id: int, scan_id: str, positive_ras, negative_ras, settings) -> None:
        """Re-segment one lesion on one timepoint from correction points (world RAS mm)."""
        session = self.timepoints.session
        current = session.observation(lesion_id, scan_id)
        positive = coords.ras_to_lps(np.asarray(positive_ras, dtype=float).reshape(-1, 3))
        if len(positive) == 0:
            raise InputError("place at least one positive correction point on the lesion")
        negative = coords.ras_to_lps(np.asarray(negative_ras, dtype=float).reshape(-1, 3)) \
            if negative_ras is not None and len(negative_ras) else None

        def apply(observation):
            state = session.checkpoint()
            try:
                session.apply_correction(observation)
                self.results.apply([scan_id])
            except Exception:
                session.rollback(state)
                raise

        self._start(_Job("correct", lambda client, sid: client.submit_correct(
            sid, lesion_id, scan_id, positive, negative, settings, current), apply, lesion_id, scan_id))

    def _start(self, job: _Job) -> None:
        if self.job is not None:
            raise RuntimeError("LinGuinE is still working; wait for it to finish or press Cancel")
        self.job, self.outcome, self._cancelling = job, None, False
        self.progress = ("starting the engine", 0.0)

    # -- polling ------------------------------------------------------------------------------------
    def tick(self) -> bool:
        """One timer step: start the service / submit / poll / apply. True while a job is still running."""
        job = self.job
        if job is None:
            return False
        try:
            if job.job_id is None:
                if self._cancelling:
                    return self._finish(JobOutcome(False, "Cancelled; the scene was left unchanged."))
                state = self.connection.poll()
                if state == "failed":
                    error = self.connection.error
                    self.connection.reset()  # start (or reconnect) again at the next job
                    return self._finish(JobOutcome(False, f"Failed: {error}", job.lesion_id, job.scan_id))
                if state != "ready":
                    self.progress = ("starting the engine service...", 0.0)
                    return True
                sid = self._upload_step()
                if sid is None:
                    return True  # one scan uploaded this tick; the GUI never waits for a whole study
                job.job_id = self.connection.follow(job.submit(self.connection.client, sid))
                self.progress = ("submitted", 0.0)
                return True
            status = self.connection.tick().get(job.job_id)
            if status is None:
                return True
            self.progress = (self.status_text(status), float(status.fraction or 0.0))
            if status.state in ("queued", "running"):
                return True
            if status.state == "cancelled" or (self._cancelling and status.state == "failed"):
                return self._finish(JobOutcome(False, "Cancelled; the scene was left unchanged."))
            if status.state == "failed":
                return self._finish(JobOutcome(False, f"Failed: {status.message}", job.lesion_id, job.scan_id))
            job.apply(self.connection.client.job_result(job.job_id))
        except Exception as exc:  # noqa: BLE001 - a dead service or a result that cannot be applied (rolled back)
            logging.exception("LinGuinE engine job failed")
            return self._finish(JobOutcome(False, f"Failed: {exc}", job.lesion_id, job.scan_id))
        done = {"track": "Tracking finished.", "correct": "Correction applied."}[job.kind]
        return self._finish(JobOutcome(True, done, job.lesion_id, job.scan_id))

    @staticmethod
    def status_text(status) -> str:
        if status.state == "queued":
            ahead = int(status.queue_ahead or 0)
            return f"engine busy, {ahead} job{'s' if ahead != 1 else ''} ahead" if ahead else "queued"
        where = f" ({status.scan_id})" if getattr(status, "scan_id", None) else ""
        return f"{status.stage or status.state}{where}" + (f": {status.message}" if status.message else "")

    def _finish(self, outcome: JobOutcome) -> bool:
        self.job, self.outcome, self._cancelling = None, outcome, False
        self.progress = (outcome.message, 1.0 if outcome.ok else 0.0)
        return False

    def _upload_step(self) -> str | None:
        """The service session of the current tracking session, or None after uploading one more of its scans
        (one scan per timer tick: 512x512x60 takes about 0.3 s over loopback)."""
        session = self.timepoints.session
        if self._remote is not None and self._remote[0] is session:
            return self._remote[1]
        if self._uploads is None or self._uploads[0] is not session:
            self.close_remote()
            self._uploads = (session, {})
        hashes, client, scans = self._uploads[1], self.connection.client, session.study.scans
        for scan in scans:
            if scan.scan_id not in hashes:
                hashes[scan.scan_id] = client.upload_scan(scan)
                self.progress = (f"sending {scan.scan_id} to the engine ({len(hashes)}/{len(scans)})", 0.0)
                return None
        self._remote, self._uploads = (session, client.open_study(session.study, hashes)), None
        return self._remote[1]

    # -- cancel and shutdown ----------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the service to cancel the running job (it restarts a local service that does not answer)."""
        if self.job is None:
            return
        self._cancelling = True
        if self.job.job_id is not None:
            self.connection.cancel(self.job.job_id)

    def close_remote(self) -> None:
        """Close the service session (its scans and cached registrations are freed)."""
        if self._remote is None:
            return
        _session, sid = self._remote
        self._remote = None
        try:
            self.connection.client.close_session(sid)
        except Exception:  # noqa: BLE001 - the service may be gone; nothing to free then
            logging.info("LinGuinE: could not close engine session %s", sid)

    def reset(self) -> None:
        """Forget the running job (its result is dropped) and the service session."""
        self.cancel()
        self.job, self._uploads = None, None
        self.close_remote()
