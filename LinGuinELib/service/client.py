"""Client of the engine service, on the standard library (``http.client``) and NumPy only, so it runs in
Slicer's Python, the CLI and the tests alike. Points are LPS mm; masks bool ``[k, j, i]``.

Every failure is a :class:`ServiceError` (a :class:`~LinGuinELib.core.errors.LinGuinEError`) whose
message names the server's URL: unreachable, wrong token, version mismatch, timeout, death mid-job, or
the server's own message for a refused request (400, 404, 413, ...).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

import numpy as np

from LinGuinELib import __version__
from LinGuinELib.core.errors import InputError, LinGuinEError, TrackingCancelled
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.core.study import Study
from LinGuinELib.core.tracking import LesionPrompt, Observation, TrackingResult
from LinGuinELib.frontend.settings import Settings
from LinGuinELib.service import protocol


class ServiceError(LinGuinEError):
    """A failure talking to the engine service (the message names its URL)."""


class ServiceUnavailable(ServiceError):
    """The service cannot be reached (down, wrong URL, firewall, TLS failure)."""


class ServiceDied(ServiceError):
    """The service stopped answering while a job was running."""


class ServiceTimeout(ServiceError):
    """The service did not answer in time."""


class AuthenticationError(ServiceError):
    """The service refused the token (401)."""


class VersionMismatch(ServiceError):
    """The service speaks another protocol version."""


class RequestRefused(ServiceError):
    """The service refused a request (400, 404, 409, 413, 507, ...) with a message."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class JobStatus:
    """A job's state (queued|running|done|failed|cancelled), latest progress message, stage
    (queued|registration|segmentation|finishing), the scan it works on, fraction done 0..1, and how many
    jobs run or wait before it."""

    job_id: str
    state: str
    message: str = ""
    stage: str = ""
    scan_id: str | None = None
    fraction: float = 0.0
    queue_ahead: int = 0
    kind: str = "track"

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @classmethod
    def from_json(cls, d: dict) -> "JobStatus":
        return cls(job_id=d["job_id"], state=d["state"], message=d.get("message", ""), stage=d.get("stage", ""),
                   scan_id=d.get("scan_id"), fraction=float(d.get("fraction", 0.0)),
                   queue_ahead=int(d.get("queue_ahead", 0)), kind=d.get("kind", "track"))


class EngineClient:
    """One engine service at ``url`` (http://host:port or https://...), authenticated by ``token``;
    ``timeout_s`` bounds every request without its own timeout."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0):
        parsed = urllib.parse.urlsplit(url.rstrip("/"))
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InputError(f"engine service URL {url!r} must look like http://HOST:PORT or https://HOST:PORT")
        self.url = f"{parsed.scheme}://{parsed.netloc}"
        self._parsed = parsed
        self.token = token.strip()
        self.timeout_s = float(timeout_s)
        # Compression costs more CPU time than it saves on loopback (a local service or an SSH tunnel).
        self.compress = not protocol.is_loopback(parsed.hostname)
        self._server: dict | None = None
        self._studies: dict[str, Study] = {}
        self._jobs: dict[str, str] = {}  # job id -> session id

    # -- transport ----------------------------------------------------------------------------------
    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        host, port = self._parsed.hostname, self._parsed.port
        if self._parsed.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
                 timeout_s: float | None = None) -> tuple[int, bytes]:
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        conn = self._connection(timeout)
        try:
            try:
                conn.request(method, path, body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered (e.g. 413) before reading the whole body: read that answer
            response = conn.getresponse()
            data = response.read()
            status = response.status
        except (socket.timeout, TimeoutError):
            raise ServiceTimeout(f"the engine service at {self.url} did not answer {method} {path} within "
                                 f"{timeout:g} s") from None
        except ssl.SSLError as exc:
            raise ServiceUnavailable(f"TLS with the engine service at {self.url} failed ({exc.reason or exc}); "
                                     "check its certificate") from None
        except (ConnectionError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ServiceUnavailable(f"the engine service at {self.url} is not reachable ({reason}); start it "
                                     "(`linguine serve`) or check the URL, tunnel and firewall") from None
        finally:
            conn.close()
        if status >= 400:
            try:
                message = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                message = data[:200].decode("utf-8", "replace") or f"HTTP {status}"
            if status == 401:
                raise AuthenticationError(f"the engine service at {self.url} refused the token (401: {message})")
            raise RequestRefused(f"the engine service at {self.url} refused {method} {path.split('?')[0]} "
                                 f"({status}): {message}", status)
        return status, data

    def _json(self, method: str, path: str, payload=None, timeout_s: float | None = None) -> dict:
        body = None if payload is None else json.dumps(payload).encode()
        _, data = self._request(method, path, body, timeout_s=timeout_s)
        return json.loads(data) if data else {}

    # -- API ----------------------------------------------------------------------------------------
    def health(self, timeout_s: float | None = None) -> dict:
        """The service's version, device, backends and limits; raises :class:`VersionMismatch` when it
        speaks another protocol."""
        info = self._json("GET", "/v1/health", timeout_s=timeout_s)
        if info.get("protocol") != protocol.PROTOCOL_VERSION:
            raise VersionMismatch(f"the engine service at {self.url} runs LinGuinE {info.get('version')} (protocol "
                                  f"{info.get('protocol')}); this client is LinGuinE {__version__} (protocol "
                                  f"{protocol.PROTOCOL_VERSION}): install the same LinGuinE version on both")
        self._server = info
        return info

    def _limits(self) -> dict:
        return self._server or self.health()

    def upload_scan(self, scan) -> str:
        """Upload one scan unless the server already has it (one HEAD, then a PUT if needed) -> its content hash.
        Front ends that must not block (Slicer) upload one scan per timer tick, then call :meth:`open_study`."""
        digest = protocol.scan_hash(scan.array, scan.origin, scan.spacing, scan.direction)
        try:
            self._request("HEAD", f"/v1/scans/{digest}")
            return digest
        except RequestRefused as exc:
            if exc.status != 404:
                raise
        limit = self._limits()["max_upload_bytes"]
        _, data = protocol.pack_scan(scan, self.compress)
        if len(data) > limit:
            raise RequestRefused(f"scan '{scan.scan_id}' is {len(data) / 2**20:.0f} MB compressed; the engine "
                                 f"service at {self.url} accepts at most {limit / 2**20:.0f} MB per upload "
                                 "(--max-upload-mb)", 413)
        self._request("PUT", f"/v1/scans/{digest}", data, protocol.PACK_CONTENT_TYPE,
                      timeout_s=max(self.timeout_s, 120.0))
        return digest

    def open_study(self, study: Study, hashes: dict[str, str] | None = None) -> str:
        """Open a study session -> session id. Scans the server lacks are uploaded first, except those whose
        hash ``hashes`` ({scan_id: hash from :meth:`upload_scan`}) already gives."""
        hashes = hashes or {}
        items = [{"scan_id": scan.scan_id, "date": scan.date.isoformat(),
                  "hash": hashes.get(scan.scan_id) or self.upload_scan(scan)} for scan in study]
        sid = self._json("POST", "/v1/sessions", {"patient_id": study.patient_id, "scans": items})["session_id"]
        self._studies[sid] = study
        return sid

    def _submit(self, session_id: str, header: dict, arrays: list) -> str:
        _, data = self._request("POST", f"/v1/sessions/{session_id}/jobs", protocol.pack(header, arrays),
                                protocol.PACK_CONTENT_TYPE)
        job_id = json.loads(data)["job_id"]
        self._jobs[job_id] = session_id
        return job_id

    @staticmethod
    def _settings(settings: Settings) -> dict:
        d = settings.to_dict()
        d.pop("device")  # the service's own --device decides
        return d

    def submit_track(self, session_id: str, prompts: list[LesionPrompt], settings: Settings) -> str:
        """Queue tracking of ``prompts`` (clicks in LPS mm or masks) to every scan -> job id. Re-tracking from
        a corrected timepoint is a track job whose prompt is that timepoint's mask."""
        arrays: list = []
        items = []
        for p in prompts:
            item = {"lesion": p.lesion.to_dict(), "scan_id": p.scan_id, "point_lps": None, "mask": None}
            if p.mask is not None:
                item["offset"], crop = protocol.crop_mask(p.mask)
                item["mask"] = len(arrays)
                arrays.append(crop)
            elif p.point_lps is not None:
                item["point_lps"] = [float(v) for v in np.asarray(p.point_lps, float).reshape(3)]
            items.append(item)
        return self._submit(session_id, {"kind": "track", "settings": self._settings(settings), "prompts": items},
                            arrays)

    def submit_correct(self, session_id: str, lesion_id: int, scan_id: str, positive_lps, negative_lps,
                       settings: Settings, current: Observation, lesion: Lesion | None = None) -> str:
        """Queue correction clicks (LPS mm) re-segmenting one lesion on one scan, given its ``current``
        observation there -> job id; the result is the new :class:`Observation`."""
        arrays: list = []
        lesion = lesion or Lesion(lesion_id)
        header = {"kind": "correct", "settings": self._settings(settings), "lesion": lesion.to_dict(),
                  "scan_id": scan_id, "current": protocol.observation_to_json(current, arrays),
                  "positive_lps": np.asarray(positive_lps, float).reshape(-1, 3).tolist(),
                  "negative_lps": [] if negative_lps is None else np.asarray(negative_lps, float).reshape(-1, 3).tolist()}
        return self._submit(session_id, header, arrays)

    def job_status(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        return JobStatus.from_json(self._json("GET", f"/v1/jobs/{job_id}", timeout_s=timeout_s))

    def cancel(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        """Ask the service to stop a job (a queued one at once, a running one at its next step)."""
        return JobStatus.from_json(self._json("POST", f"/v1/jobs/{job_id}/cancel", timeout_s=timeout_s))

    def job_result(self, job_id: str):
        """A done job's result: a :class:`TrackingResult` on the client's own Study object (track jobs) or
        an :class:`Observation` (correct jobs)."""
        if job_id not in self._jobs:
            raise InputError(f"job {job_id[:8]}... was not submitted by this client; its study is unknown here")
        study = self._studies[self._jobs[job_id]]
        _, data = self._request("GET", f"/v1/jobs/{job_id}/result", timeout_s=max(self.timeout_s, 120.0))
        header, arrays = protocol.unpack(data)
        if header.get("kind") == "observation":
            d = header["observation"]
            return protocol.observation_from_json(d, arrays, study.scan(d["scan_id"]).shape)
        lesions = [Lesion.from_dict(l) for l in header["lesions"]]
        result = TrackingResult(study, lesions, {l.lesion_id: {} for l in lesions}, header["stats"])
        for d in header["observations"]:
            obs = protocol.observation_from_json(d, arrays, study.scan(d["scan_id"]).shape)
            result.observations[obs.lesion_id][obs.scan_id] = obs
        for lid in result.observations:
            result.observations[lid] = {s.scan_id: result.observations[lid][s.scan_id] for s in study
                                        if s.scan_id in result.observations[lid]}
        return result

    def close_session(self, session_id: str) -> None:
        self._json("DELETE", f"/v1/sessions/{session_id}")
        self._studies.pop(session_id, None)
        for jid in [j for j, s in self._jobs.items() if s == session_id]:
            del self._jobs[jid]

    def track(self, study: Study, prompts: list[LesionPrompt], settings: Settings,
              progress: Callable[[str, int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
              poll_s: float = 0.2) -> TrackingResult:
        """Blocking tracking through the service (CLI, tests). ``progress(message, done, total)`` as the
        Tracker's; ``cancel()`` returning True cancels the job (then :class:`TrackingCancelled`)."""
        session_id = self.open_study(study)
        try:
            job_id = self.submit_track(session_id, prompts, settings)
            cancelled = False
            while True:
                try:
                    status = self.job_status(job_id)
                except (ServiceUnavailable, ServiceTimeout) as exc:
                    raise ServiceDied(f"the engine service at {self.url} stopped answering during job "
                                      f"{job_id[:8]}... ({exc}); no result was received") from None
                if progress:
                    queued = f" (busy, {status.queue_ahead} job(s) ahead)" if status.state == "queued" else ""
                    progress(status.message + queued, int(round(1000 * status.fraction)), 1000)
                if status.state == "done":
                    return self.job_result(job_id)
                if status.state == "failed":
                    raise ServiceError(f"the engine service at {self.url}: job failed: {status.message}")
                if status.state == "cancelled":
                    raise TrackingCancelled("tracking cancelled by the user")
                if cancel and cancel() and not cancelled:
                    self.cancel(job_id)
                    cancelled = True
                time.sleep(poll_s)
        finally:
            try:
                self.close_session(session_id)
            except ServiceError:
                pass  # the session goes with a dead server, or expires on its own


def client_from_args(url: str, token_file: str | None = None, timeout_s: float = 30.0) -> EngineClient:
    """A client for the CLI: the token from ``token_file``, else ``$LINGUINE_TOKEN``."""
    import os
    from pathlib import Path

    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise InputError(f"{path}: token file not found (the service writes it at start: --token-file)")
        token = path.read_text().strip()
    else:
        token = os.environ.get("LINGUINE_TOKEN", "").strip()
    if not token:
        raise InputError(f"no token for the engine service at {url}: give --token-file FILE or set LINGUINE_TOKEN")
    return EngineClient(url, token, timeout_s=timeout_s)
