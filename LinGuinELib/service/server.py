"""``linguine serve``: the engine service (FastAPI + uvicorn), local to one user or a team's GPU server.

State kept warm across requests: uploaded scans (by content hash, LRU-evicted under ``max_memory_gb``),
study sessions (expire after ``idle_timeout_s`` without use) each with its registration caches, and
backends built once per backend settings. Jobs run one at a time on one worker thread per device (the
device's lock); the queue's state is reported to clients ("2 jobs ahead").

Security: every request needs ``Authorization: Bearer <token>`` (constant-time compare); ids are
``secrets.token_urlsafe``; no request field names a server path; uploads are size-limited (413 before
the body is read) and validated (:mod:`LinGuinELib.service.protocol`); every error is
``{"error": message}``; the access log holds method, route template, status and milliseconds only.
"""


import hmac
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LinGuinELib import __version__
from LinGuinELib.backends import REGISTRATIONS, SEGMENTERS
from LinGuinELib.core.cancel import cancel_scope
from LinGuinELib.core.errors import InputError, LinGuinEError, TrackingCancelled
from LinGuinELib.core.study import Scan, Study, parse_date
from LinGuinELib.core.tracking import LesionPrompt, Tracker, TrackingResult
from LinGuinELib.frontend.settings import Settings
from LinGuinELib.registration.base import RegistrationCache
from LinGuinELib.service import protocol

log = logging.getLogger("linguine.service")
access_log = logging.getLogger("linguine.access")

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
PENDING_S = 120.0  # an upload no session uses yet is kept this long before LRU scans of idle sessions


class ServiceError(Exception):
    """An error answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class ServiceConfig:
    """``token``: the bearer token; ``device``: auto|cpu|cuda|cuda:N for every job; limits in MB/GB/s."""

    token: str
    device: str = "auto"
    max_upload_mb: float = 2048.0
    max_memory_gb: float = 16.0
    idle_timeout_s: float = 3600.0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_memory_bytes(self) -> int:
        return int(self.max_memory_gb * 2**30)


@dataclass
class StoredScan:
    array: np.ndarray
    geometry: dict
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class StudySession:
    session_id: str
    study: Study
    hashes: dict[str, str]  # scan_id -> content hash
    caches: dict = field(default_factory=dict)  # registration backend key -> RegistrationCache
    jobs: set = field(default_factory=set)
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class Job:
    job_id: str
    session_id: str
    kind: str
    header: dict
    arrays: list
    state: str = "queued"
    message: str = "queued"
    stage: str = "queued"
    scan_id: str | None = None
    fraction: float = 0.0
    result: bytes | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: float | None = None

    def report(self, message: str, done: int, total: int) -> None:
        """Tracker progress -> stage, scan and fraction (the Tracker's step messages name the scan)."""
        self.message = message
        self.fraction = min(1.0, done / total) if total else 0.0
        if message.startswith("registering "):
            return  # the registration itself is reported by JobCache while it runs
        if message == "done":
            self.stage, self.scan_id = "finishing", None
        else:
            m = re.search(r": (?:segmenting |correcting )?(.+?)(?: \(source\))?$", message)
            self.stage, self.scan_id = "segmentation", (m.group(1) if m else None)


class JobCache:
    """A session's :class:`RegistrationCache` seen by one job: reports the registration stage while a
    pair is computed (the Tracker's own step messages announce the segmentation that follows)."""

    def __init__(self, cache: RegistrationCache, job: Job):
        self.cache, self.job = cache, job

    def has(self, source_id: str, target_id: str) -> bool:
        return self.cache.has(source_id, target_id)

    def get(self, source: Scan, target: Scan):
        if self.cache.has(source.scan_id, target.scan_id):
            return self.cache.get(source, target)
        stage = self.job.stage, self.job.scan_id, self.job.message
        self.job.stage, self.job.scan_id = "registration", target.scan_id
        self.job.message = f"registering {source.scan_id} -> {target.scan_id}"
        try:
            return self.cache.get(source, target)
        finally:
            self.job.stage, self.job.scan_id, self.job.message = stage

    @property
    def computed(self) -> int:
        return self.cache.computed

    @property
    def seconds(self) -> float:
        return self.cache.seconds


class Engine:
    """The service's state and its one worker thread (one device per service, so one device lock)."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.lock = threading.RLock()
        self.wake = threading.Condition(self.lock)
        self.scans: OrderedDict[str, StoredScan] = OrderedDict()
        self.sessions: OrderedDict[str, StudySession] = OrderedDict()
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.running: str | None = None
        self.backends: dict = {}  # backend settings key -> backend (built once, on the worker)
        self.result_bytes = 0
        self._stop = False
        self.worker = threading.Thread(target=self._work, name="linguine-device-worker", daemon=True)
        self.janitor = threading.Thread(target=self._expire_loop, name="linguine-expiry", daemon=True)
        self.worker.start()
        self.janitor.start()

    # -- memory ------------------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        with self.lock:
            return sum(s.array.nbytes for s in self.scans.values()) + self.result_bytes

    def _referenced(self) -> set[str]:
        return {h for s in self.sessions.values() for h in s.hashes.values()}

    def _drop_session(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        for jid in session.jobs:
            job = self.jobs.pop(jid, None)
            if job is not None:
                job.cancel.set()
                if job.result is not None:
                    self.result_bytes -= len(job.result)
                if jid in self.queue:
                    self.queue.remove(jid)
        for backend in self.backends.values():  # per-scan caches of the backends (e.g. image pyramids)
            forget = getattr(backend, "forget", None)
            for scan_id in session.hashes if forget else ():
                forget(scan_id)

    def _make_room(self, need: int) -> None:
        """Evict until ``need`` more bytes fit: first scans no session uses and nobody uploaded in the last
        ``PENDING_S`` seconds, then the least recently used idle sessions (their scans become free), then,
        as a last resort, recent uploads no session uses yet (least recently used first)."""
        cap = self.config.max_memory_bytes
        while self.memory_bytes() + need > cap:
            referenced = self._referenced()
            recent = time.monotonic() - PENDING_S
            free = [h for h, s in self.scans.items() if h not in referenced]
            old = [h for h in free if self.scans[h].last_used < recent]
            idle = [sid for sid, s in self.sessions.items() if not self._busy(s)]
            if old:
                del self.scans[old[0]]
            elif idle:
                self._drop_session(idle[0])
            elif free:
                del self.scans[free[0]]
            else:
                raise ServiceError(507, f"the engine service's memory limit ({self.config.max_memory_gb:g} GB) is "
                                        "reached by studies with jobs running; try again when they finish, or ask "
                                        "its administrator to raise --max-memory-gb")

    def _busy(self, session: StudySession) -> bool:
        return any(self.jobs[j].state in ("queued", "running") for j in session.jobs if j in self.jobs)

    def expire_idle(self) -> int:
        """Close sessions (and drop scans) unused for ``idle_timeout_s``; returns how many sessions closed."""
        limit = time.monotonic() - self.config.idle_timeout_s
        with self.lock:
            old = [sid for sid, s in self.sessions.items() if s.last_used < limit and not self._busy(s)]
            for sid in old:
                self._drop_session(sid)
            referenced = self._referenced()
            for h in [h for h, s in self.scans.items() if h not in referenced and s.last_used < limit]:
                del self.scans[h]
        return len(old)

    def _expire_loop(self) -> None:
        period = max(0.2, min(self.config.idle_timeout_s / 4, 30.0))
        while not self._stop:
            time.sleep(period)
            try:
                self.expire_idle()
            except Exception:  # never let the janitor die
                log.exception("session expiry failed")

    # -- scans and sessions -----------------------------------------------------------------------
    @staticmethod
    def check_hash(digest: str) -> str:
        if not HASH_RE.match(digest):
            raise ServiceError(400, "a scan is addressed by its 64-character lowercase sha256 hex digest")
        return digest

    def has_scan(self, digest: str) -> bool:
        with self.lock:
            stored = self.scans.get(self.check_hash(digest))
            if stored is not None:
                stored.last_used = time.monotonic()
                self.scans.move_to_end(digest)
            return stored is not None

    def put_scan(self, digest: str, body: bytes) -> bool:
        """Store an uploaded scan; False if it was already there (nothing decoded)."""
        if self.has_scan(digest):
            return False
        header, arrays = protocol.unpack(body, max_bytes=self.config.max_memory_bytes)
        array, geometry = protocol.validate_scan(header, arrays, digest)
        with self.lock:
            if digest not in self.scans:
                self._make_room(array.nbytes)
                self.scans[digest] = StoredScan(array, geometry)
        return True

    def open_session(self, body: dict) -> str:
        if not isinstance(body, dict) or not isinstance(body.get("scans"), list):
            raise ServiceError(400, "open a study session with {patient_id, scans: [{scan_id, date, hash}, ...]}")
        patient = str(body.get("patient_id", ""))
        with self.lock:
            scans, hashes = [], {}
            for n, item in enumerate(body["scans"]):
                if not isinstance(item, dict) or not {"scan_id", "date", "hash"} <= set(item):
                    raise ServiceError(400, f"scan {n} of the session needs scan_id, date and hash")
                scan_id, digest = str(item["scan_id"]), self.check_hash(str(item["hash"]))
                stored = self.scans.get(digest)
                if stored is None:
                    raise ServiceError(404, f"scan '{scan_id}' (hash {digest[:12]}...) is not on the server; upload it first")
                stored.last_used = time.monotonic()
                g = stored.geometry
                scans.append(Scan(scan_id=scan_id, array=stored.array, origin=g["origin"], spacing=g["spacing"],
                                  direction=g["direction"], date=parse_date(str(item["date"]), f"scan '{scan_id}'")))
                hashes[scan_id] = digest
            study = Study(patient_id=patient, scans=scans)
            sid = secrets.token_urlsafe(24)
            self.sessions[sid] = StudySession(sid, study, hashes)
        return sid

    def session(self, sid: str) -> StudySession:
        with self.lock:
            session = self.sessions.get(sid)
            if session is None:
                raise ServiceError(404, "unknown or expired study session (idle sessions expire, and the "
                                        "service may have restarted); open the study again")
            session.last_used = time.monotonic()
            self.sessions.move_to_end(sid)
            for h in session.hashes.values():
                if h in self.scans:
                    self.scans[h].last_used = session.last_used
                    self.scans.move_to_end(h)
            return session

    def close_session(self, sid: str) -> None:
        with self.lock:
            self.session(sid)
            self._drop_session(sid)

    # -- jobs -------------------------------------------------------------------------------------
    def settings(self, data) -> Settings:
        if not isinstance(data, dict):
            raise ServiceError(400, "settings must be a JSON object (see LinGuinELib.frontend.settings.Settings)")
        if data.get("weights") is not None:
            raise ServiceError(400, "settings.weights names a file, and a client cannot name paths on the engine "
                                    "service; its administrator provides weights (model cache or LINGUINE_WEIGHTS)")
        return Settings.from_dict({**data, "device": self.config.device, "weights": None})

    def submit(self, sid: str, body: bytes) -> Job:
        header, arrays = protocol.unpack(body, max_bytes=self.config.max_memory_bytes)
        kind = header.get("kind")
        if kind not in ("track", "correct"):
            raise ServiceError(400, f"unknown job kind {kind!r}; use 'track' or 'correct'")
        settings = self.settings(header.get("settings", {}))
        with self.lock:
            session = self.session(sid)
            study = session.study
            if kind == "track":
                prompts = header.get("prompts")
                if not isinstance(prompts, list) or not prompts:
                    raise ServiceError(400, "a track job needs at least one prompt")
                header["_prompts"] = [self._prompt(p, arrays, study) for p in prompts]
            else:
                for key in ("lesion", "scan_id", "positive_lps", "current"):
                    if key not in header:
                        raise ServiceError(400, f"a correct job needs {key}")
                scan = study.scan(str(header["scan_id"]))
                header["_lesion"] = protocol.lesion_from_json(header["lesion"])
                header["_positive"] = protocol.points(header["positive_lps"], "positive_lps")
                if len(header["_positive"]) == 0:
                    raise ServiceError(400, "place at least one positive correction point (LPS mm)")
                header["_negative"] = protocol.points(header.get("negative_lps"), "negative_lps")
                header["_current"] = protocol.observation_from_json(header["current"], arrays, scan.shape)
            header["_settings"] = settings
            job = Job(secrets.token_urlsafe(24), sid, kind, header, arrays)
            self.jobs[job.job_id] = job
            session.jobs.add(job.job_id)
            self.queue.append(job.job_id)
            self.wake.notify_all()
        return job

    @staticmethod
    def _prompt(p, arrays, study: Study) -> LesionPrompt:
        if not isinstance(p, dict) or "scan_id" not in p or "lesion" not in p:
            raise ServiceError(400, "each prompt needs a lesion and a scan_id, and a point_lps or a mask")
        lesion = protocol.lesion_from_json(p["lesion"])
        scan = study.scan(str(p["scan_id"]))
        if p.get("mask") is not None:
            index = int(p["mask"])
            if not 0 <= index < len(arrays):
                raise ServiceError(400, f"prompt mask index {index} names no array of the message")
            return LesionPrompt(lesion, scan.scan_id, mask=protocol.uncrop_mask(p.get("offset"), arrays[index], scan.shape))
        if p.get("point_lps") is None:
            raise ServiceError(400, f"lesion {lesion.lesion_id}: give a point_lps (LPS mm) or a mask")
        return LesionPrompt(lesion, scan.scan_id, point_lps=protocol.point(p["point_lps"], "point_lps"))

    def job(self, jid: str) -> Job:
        with self.lock:
            job = self.jobs.get(jid)
            if job is None:
                raise ServiceError(404, "unknown job (finished jobs go with their expired study session)")
            if job.session_id in self.sessions:
                self.sessions[job.session_id].last_used = time.monotonic()
            return job

    def status(self, jid: str) -> dict:
        with self.lock:
            job = self.job(jid)
            ahead = 0
            if job.state == "queued":
                ahead = list(self.queue).index(jid) + (1 if self.running else 0)
            return {"job_id": jid, "kind": job.kind, "state": job.state, "message": job.message, "stage": job.stage,
                    "scan_id": job.scan_id, "fraction": round(job.fraction, 4), "queue_ahead": ahead}

    def cancel(self, jid: str) -> dict:
        with self.lock:
            job = self.job(jid)
            if job.state == "queued":
                self.queue.remove(jid)
                job.state, job.message, job.finished = "cancelled", "cancelled before it started", time.monotonic()
            elif job.state == "running":
                job.cancel.set()
                job.message = "cancelling"
        return self.status(jid)

    def result(self, jid: str) -> bytes:
        job = self.job(jid)
        if job.state != "done":
            raise ServiceError(409, f"job is {job.state}, it has no result" + (f": {job.message}" if job.state == "failed" else ""))
        return job.result

    def _backend(self, kind: str, settings: Settings):
        key = (kind, getattr(settings, kind), tuple(sorted(settings.options(kind).items())))
        if key not in self.backends:
            self.backends[key] = settings.make_registration() if kind == "registration" else settings.make_segmenter()
        return key, self.backends[key]

    def _run(self, job: Job) -> bytes:
        settings: Settings = job.header["_settings"]
        session = self.session(job.session_id)
        reg_key, registration = self._backend("registration", settings)
        _, segmenter = self._backend("segmentation", settings)
        with self.lock:
            cache = session.caches.setdefault(reg_key, RegistrationCache(registration))
        tracker = Tracker(session.study, registration, segmenter, progress=job.report, cancel=job.cancel.is_set,
                          cache=JobCache(cache, job), **settings.tracker_options())
        if job.kind == "track":
            with cancel_scope(job.cancel.is_set):  # reaches into the registration's optimisers
                return protocol.result_to_pack(tracker.track(job.header["_prompts"]))
        lesion, current = job.header["_lesion"], job.header["_current"]
        job.report(f"{lesion.name}: correcting {current.scan_id}", 0, 1)
        scratch = TrackingResult(session.study, [lesion], {lesion.lesion_id: {current.scan_id: current}})
        obs = tracker.resegment(scratch, lesion.lesion_id, current.scan_id, job.header["_positive"],
                                job.header["_negative"] if len(job.header["_negative"]) else None)
        arrays: list = []
        return protocol.pack({"kind": "observation", "observation": protocol.observation_to_json(obs, arrays)}, arrays)

    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.queue:
                    self.wake.wait()
                jid = self.queue.popleft()
                job = self.jobs.get(jid)
                if job is None or job.state != "queued":
                    continue
                job.state, job.message, self.running = "running", "starting", jid
            try:
                data = self._run(job)
                state, message = "done", "done"
            except TrackingCancelled:
                data, state, message = None, "cancelled", "cancelled"
            except (LinGuinEError, ServiceError) as exc:
                data, state, message = None, "failed", str(exc)
            except MemoryError:
                data, state, message = None, "failed", "the engine service ran out of memory on this job"
            except Exception as exc:  # a backend bug: the job fails, the service keeps running
                log.exception("job failed")
                data, state, message = None, "failed", f"internal error in the engine ({type(exc).__name__}: {exc})"
            with self.lock:
                job.header, job.arrays = {}, []
                if data is not None and jid in self.jobs:
                    self.result_bytes += len(data)
                job.result, job.state, job.message = data, state, message
                job.fraction = 1.0 if state == "done" else job.fraction
                job.finished, self.running = time.monotonic(), None

    def health(self) -> dict:
        with self.lock:
            return {"software": "LinGuinE", "version": __version__, "protocol": protocol.PROTOCOL_VERSION,
                    "device": self.device_name(), "registrations": sorted(REGISTRATIONS),
                    "segmentations": sorted(SEGMENTERS), "max_upload_bytes": self.config.max_upload_bytes,
                    "max_memory_bytes": self.config.max_memory_bytes, "memory_bytes": self.memory_bytes(),
                    "scans": len(self.scans), "sessions": len(self.sessions), "queued": len(self.queue),
                    "running": self.running is not None}

    def device_name(self) -> str:
        if self.config.device != "auto":
            return self.config.device
        try:
            import torch
            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"


# -- HTTP --------------------------------------------------------------------------------------------
def create_app(config: ServiceConfig):
    """The FastAPI application of one service (its :class:`Engine` is ``app.state.engine``)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if not config.token:
        raise InputError("the engine service needs a token")
    app = FastAPI(title="LinGuinE engine service", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, redirect_slashes=False)
    engine = Engine(config)
    app.state.engine = engine
    expected = f"Bearer {config.token}".encode()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(protocol.error_body(message), status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        start = time.perf_counter()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            response = error(401, "missing or wrong bearer token: use the token from the service's token file")
        else:
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > config.max_upload_bytes):
                response = error(413, f"upload of {length} bytes exceeds the service's limit of "
                                      f"{config.max_upload_mb:g} MB (--max-upload-mb)")
            else:
                try:
                    response = await call_next(request)
                except Exception as exc:  # anything an endpoint did not turn into a reply
                    log.exception("request failed")
                    response = error(500, f"internal error in the engine service ({type(exc).__name__}); "
                                          "see the service's log")
        route = request.scope.get("route")
        access_log.info("%s %s %d %.1f ms", request.method, getattr(route, "path", "-"), response.status_code,
                        1000 * (time.perf_counter() - start))
        return response

    @app.exception_handler(ServiceError)
    async def _service_error(request, exc: ServiceError):
        return error(exc.status, str(exc))

    @app.exception_handler(LinGuinEError)
    async def _input_error(request, exc: LinGuinEError):
        return error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return error(exc.status_code, str(exc.detail) if exc.status_code != 404 else
                     f"no such endpoint: {request.method} {request.url.path}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        return error(400, f"bad request: {'.'.join(str(v) for v in first.get('loc', ()))} {first.get('msg', '')}".strip())

    @app.exception_handler(Exception)
    async def _any_error(request, exc):
        log.exception("request failed")
        return error(500, f"internal error in the engine service ({type(exc).__name__}); see the service's log")

    async def body(request: Request) -> bytes:
        """The request body, refused with 413 as soon as it passes the limit (chunked uploads too)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_upload_bytes:
                raise ServiceError(413, f"upload exceeds the service's limit of {config.max_upload_mb:g} MB (--max-upload-mb)")
            chunks.append(chunk)
        return b"".join(chunks)

    async def json_body(request: Request) -> dict:
        try:
            return json.loads(await body(request))
        except ValueError:
            raise ServiceError(400, "the request body must be JSON") from None

    def pack_response(data: bytes) -> Response:
        return Response(data, media_type=protocol.PACK_CONTENT_TYPE)

    from starlette.concurrency import run_in_threadpool

    @app.get("/v1/health")
    async def health():
        return engine.health()

    @app.api_route("/v1/scans/{digest}", methods=["GET", "HEAD"])
    async def scan_check(digest: str):
        if not engine.has_scan(digest):
            raise ServiceError(404, f"scan {digest[:12]}... is not on the server")
        return {"hash": digest}

    @app.put("/v1/scans/{digest}")
    async def scan_put(digest: str, request: Request):
        engine.check_hash(digest)
        data = await body(request)
        stored = await run_in_threadpool(engine.put_scan, digest, data)
        return JSONResponse({"hash": digest, "stored": stored}, status_code=201 if stored else 200)

    @app.post("/v1/sessions")
    async def session_open(request: Request):
        data = await json_body(request)
        return JSONResponse({"session_id": await run_in_threadpool(engine.open_session, data)}, status_code=201)

    @app.get("/v1/sessions/{sid}")
    async def session_get(sid: str):
        s = engine.session(sid)
        return {"session_id": sid, "patient_id": s.study.patient_id,
                "scans": [{"scan_id": x.scan_id, "date": x.date.isoformat(), "hash": s.hashes[x.scan_id]} for x in s.study]}

    @app.delete("/v1/sessions/{sid}")
    async def session_close(sid: str):
        engine.close_session(sid)
        return {"closed": sid}

    @app.post("/v1/sessions/{sid}/jobs")
    async def job_submit(sid: str, request: Request):
        data = await body(request)
        job = await run_in_threadpool(engine.submit, sid, data)
        return JSONResponse(engine.status(job.job_id), status_code=201)

    @app.get("/v1/jobs/{jid}")
    async def job_status(jid: str):
        return engine.status(jid)

    @app.post("/v1/jobs/{jid}/cancel")
    async def job_cancel(jid: str):
        return engine.cancel(jid)

    @app.get("/v1/jobs/{jid}/result")
    async def job_result(jid: str):
        return pack_response(engine.result(jid))

    return app


# -- running ----------------------------------------------------------------------------------------
def load_or_make_token(token_file: str | None, host: str) -> tuple[str, str]:
    """(token, where it came from). ``$LINGUINE_TOKEN`` wins; else ``token_file`` is read if it exists and
    is non-empty, or created (mode 0600) with a fresh random token; without either, a loopback service
    makes a random token it prints, and any other address is refused."""
    env = os.environ.get("LINGUINE_TOKEN", "").strip()
    if env:
        return env, "$LINGUINE_TOKEN"
    if token_file:
        path = Path(token_file)
        if path.is_file() and path.read_text().strip():
            if path.stat().st_mode & 0o077:
                log.warning("token file %s is readable by other users; chmod 600 it", path)
            return path.read_text().strip(), str(path)
        token = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.replace(tmp, path)
        return token, str(path)
    if not protocol.is_loopback(host):
        raise InputError(f"refusing to serve on {host} (not loopback) without a token: give --token-file FILE "
                         "or set LINGUINE_TOKEN")
    return secrets.token_urlsafe(32), "printed"


def run(host: str = "127.0.0.1", port: int = 8765, token_file: str | None = None, tls_cert: str | None = None,
        tls_key: str | None = None, device: str = "auto", max_upload_mb: float = 2048.0,
        max_memory_gb: float = 16.0, idle_timeout_s: float = 3600.0, ready_file: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM. ``port`` 0 picks a free port; ``ready_file`` is written atomically with
    ``{"url", "port", "pid"}`` once the service accepts connections."""
    import uvicorn

    if bool(tls_cert) != bool(tls_key):
        raise InputError("give both --tls-cert and --tls-key, or neither")
    for p in (tls_cert, tls_key):
        if p and not Path(p).is_file():
            raise InputError(f"{p}: file not found")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    token, source = load_or_make_token(token_file, host)
    if source == "printed":
        print(f"linguine serve: token for this run: {token}", file=sys.stderr)
    if not protocol.is_loopback(host) and not tls_cert:
        log.warning("serving on %s without TLS: tokens and scans cross the network in clear text; give "
                    "--tls-cert/--tls-key or reach the service through an SSH tunnel", host)
    app = create_app(ServiceConfig(token=token, device=device, max_upload_mb=max_upload_mb,
                                   max_memory_gb=max_memory_gb, idle_timeout_s=idle_timeout_s))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    sock.listen(128)
    actual = sock.getsockname()[1]
    scheme = "https" if tls_cert else "http"
    url = f"{scheme}://{host if ':' not in host else '[' + host + ']'}:{actual}"

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if ready_file:
                path = Path(ready_file)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(json.dumps({"url": url, "port": actual, "pid": os.getpid()}))
                os.replace(tmp, path)
            log.info("LinGuinE %s engine service on %s (device %s)", __version__, url, device)

    config = uvicorn.Config(app, log_level="warning", access_log=False, ssl_certfile=tls_cert, ssl_keyfile=tls_key,
                            timeout_keep_alive=30, lifespan="off")
    Server(config).run(sockets=[sock])
