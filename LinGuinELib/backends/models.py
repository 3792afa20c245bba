"""Model weights: catalogue, cache folder, downloads (atomic, resumable, verified) and local overrides.

* The catalogue is ``Resources/models.json`` (found beside the package in a checkout or Slicer install, or
  as ``LinGuinELib/Resources/models.json`` in a wheel): per model an id, license, the path the backend
  loads and its files with download URL(s) and approximate size.
* Cache: ``$LINGUINE_HOME`` or the user's cache folder (``~/.cache/linguine``, ``~/Library/Caches/linguine``,
  ``%LOCALAPPDATA%\\linguine\\Cache``), never the working directory or the install folder. Model ``m`` lives
  in ``<cache>/models/<m>/``.
* Downloads go to ``<file>.part`` and are renamed once complete (length checked); an interrupted download
  resumes with an HTTP Range request. Progress goes to a ``progress(message, done_bytes, total_bytes)``
  callback (tqdm on stderr by default; returning ``False`` cancels). After a backend has loaded the files
  successfully, their sha256 is recorded (``.linguine-sha256.json``) and checked on every later load, so a
  truncated or corrupted file is detected and downloaded again.
* Local weights: ``--weights PATH`` / ``$LINGUINE_WEIGHTS`` (several paths joined by ``os.pathsep``). A file
  is taken as a single-file model's weights; a folder is searched for ``<id>/<path>``, ``<path>`` or, for
  folder models, the model folder itself. Local files are never modified or deleted.
* One model's cache folder is changed by one process at a time: a file lock (``<cache>/models/.<id>.lock``)
  makes a second LinGuinE or Slicer process wait for the first one's download instead of writing the same
  ``.part`` file; the waiting one says so on stderr and through ``progress`` (returning ``False`` cancels).
* ``$LINGUINE_OFFLINE=1`` forbids downloads. A failed or forbidden download raises a
  :class:`~LinGuinEError` naming each URL and the exact path where the file may be placed by hand.
* Models whose license must be shown (nnInteractive's CC BY-NC-SA 4.0) go through ``acknowledge(spec)``
  before a download starts: the default prints the notice on stderr; a GUI may ask and return ``False``
  to refuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from LinGuinELib import __version__
from LinGuinELib.core.errors import InputError, LinGuinEError, TrackingCancelled

Progress = Callable[[str, int, int], "bool | None"]  # (message, bytes done, bytes total or 0) -> False cancels

_PACKAGE = Path(__file__).resolve().parents[1]  # LinGuinELib/
CATALOGUE_CANDIDATES = (_PACKAGE / "Resources" / "models.json", _PACKAGE.parent / "Resources" / "models.json")
SHA_RECORD = ".linguine-sha256.json"
_CHUNK = 1 << 18


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the model's folder, '/'-separated
    urls: tuple[str, ...]
    bytes: int | None = None  # approximate, for display and progress
    sha256: str | None = None  # known digest, checked after download when given


@dataclass(frozen=True)
class ModelSpec:
    id: str
    name: str
    license: str
    license_url: str
    path: str  # what the backend loads (a file or folder), relative to the model's folder
    files: tuple[ModelFile, ...]
    show_license: bool = False
    notice: str = ""

    @property
    def approx_bytes(self) -> int:
        return sum(f.bytes or 0 for f in self.files)

    @property
    def is_single_file(self) -> bool:
        return len(self.files) == 1 and self.files[0].path == self.path


def find_catalogue() -> Path:
    for path in CATALOGUE_CANDIDATES:
        if path.is_file():
            return path
    raise LinGuinEError("model catalogue models.json not found; looked in: " + ", ".join(map(str, CATALOGUE_CANDIDATES)))


def load_catalogue(path: str | os.PathLike | None = None) -> dict[str, ModelSpec]:
    """Read and validate the catalogue -> {model id: ModelSpec}."""
    path = Path(path) if path else find_catalogue()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        specs = {}
        for m in data["models"]:
            files = tuple(ModelFile(f["path"], tuple(f["urls"]), f.get("bytes"), f.get("sha256")) for f in m["files"])
            if not files or any(not f.urls for f in files):
                raise ValueError(f"model {m['id']!r} lists no files or a file without URL")
            specs[m["id"]] = ModelSpec(m["id"], m["name"], m["license"], m["license_url"], m["path"], files,
                                       bool(m.get("show_license", False)), m.get("notice", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LinGuinEError(f"{path}: invalid model catalogue ({exc})") from exc
    return specs


def user_cache_dir() -> Path:
    """The platform's per-user cache folder for LinGuinE."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "linguine"
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "linguine" / "Cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "linguine"


def linguine_home() -> Path:
    """``$LINGUINE_HOME`` (made absolute) or :func:`user_cache_dir`."""
    env = os.environ.get("LINGUINE_HOME")
    return Path(env).expanduser().resolve() if env else user_cache_dir()


def weights_paths(weights: str | os.PathLike | None = None) -> list[Path]:
    """Local weight locations: ``weights`` (if given) then each entry of ``$LINGUINE_WEIGHTS``."""
    items = [str(weights)] if weights else []
    items += [p for p in os.environ.get("LINGUINE_WEIGHTS", "").split(os.pathsep) if p.strip()]
    return [Path(p).expanduser() for p in items]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def tqdm_progress() -> Progress:
    """A download progress callback drawing one tqdm bar (bytes) per file on stderr."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(message: str, done: int, total: int):
        bar = bars.get(message)
        if bar is None:
            bar = bars[message] = tqdm(total=total or None, desc=message, unit="B", unit_scale=True,
                                       unit_divisor=1024, file=sys.stderr, leave=False, dynamic_ncols=True)
        bar.total = total or None
        bar.update(done - bar.n)
        if total and done >= total:
            bar.close()
            bars.pop(message, None)

    return progress


def print_notice(spec: ModelSpec) -> bool:
    """Default license acknowledgement: show the notice on stderr and go on."""
    print(f"linguine: {spec.name} is licensed {spec.license} ({spec.license_url}).\n  {spec.notice}",
          file=sys.stderr)
    return True


class _LoadFailed(Exception):
    """A backend's loader raised on a weights file."""


class _Incomplete(Exception):
    """The connection ended before the whole file arrived (the .part file is kept)."""


class ModelManager:
    """Finds, downloads and verifies model weights. Thread-safe, and safe across processes sharing a cache."""

    def __init__(self, home: str | os.PathLike | None = None, catalogue: dict[str, ModelSpec] | None = None,
                 progress: Progress | None = None, acknowledge: Callable[[ModelSpec], bool] | None = None,
                 offline: bool | None = None, timeout: float = 60.0, attempts: int = 4):
        self.home = Path(home).expanduser().resolve() if home else linguine_home()
        self.catalogue = catalogue if catalogue is not None else load_catalogue()
        self.progress = progress
        self.acknowledge = acknowledge or print_notice
        self.offline = offline if offline is not None else os.environ.get("LINGUINE_OFFLINE", "") not in ("", "0")
        self.timeout = timeout
        self.attempts = attempts
        self._lock = threading.RLock()
        self._verified: dict[tuple, str] = {}

    # -- lookup ---------------------------------------------------------------------------------------
    def spec(self, model_id: str) -> ModelSpec:
        if model_id not in self.catalogue:
            raise InputError(f"unknown model {model_id!r}; the catalogue has: {', '.join(self.catalogue)}")
        return self.catalogue[model_id]

    def model_dir(self, model_id: str) -> Path:
        """The cache folder of ``model_id``: ``<home>/models/<id>``."""
        return self.home / "models" / self.spec(model_id).id

    def is_cached(self, path: str | os.PathLike) -> bool:
        """True when ``path`` lies in this manager's cache (and so may be deleted and downloaded again)."""
        return Path(path).resolve().is_relative_to(self.home / "models")

    def locate_local(self, model_id: str, weights: str | os.PathLike | None = None) -> Path | None:
        """The model in ``weights`` / ``$LINGUINE_WEIGHTS``, or None. A path that does not exist is an error."""
        spec = self.spec(model_id)
        inner = [f.path for f in spec.files]
        for root in weights_paths(weights):
            if not root.exists():
                raise InputError(f"{root}: weights path not found (from --weights or LINGUINE_WEIGHTS)")
            if root.is_file():
                if spec.is_single_file:
                    return root
                continue
            for base in (root / spec.id, root / "models" / spec.id, root):
                if all((base / p).is_file() for p in inner):
                    return base / spec.path
            # the model folder itself (e.g. .../nnInteractive_v1.0 holding plans.json and fold_0/)
            prefix = spec.path.rstrip("/") + "/"
            if not spec.is_single_file and all(p.startswith(prefix) for p in inner) and \
                    all((root / p[len(prefix):]).is_file() for p in inner):
                return root
        return None

    # -- the main entry points ----------------------------------------------------------------------------
    def ensure(self, model_id: str, weights: str | os.PathLike | None = None) -> Path:
        """Path of the model to load: local weights if given, else the cache (downloading what is missing
        or fails verification)."""
        local = self.locate_local(model_id, weights)
        if local is not None:
            return local
        spec = self.spec(model_id)
        folder = self.model_dir(model_id)
        with self._exclusive(spec):
            missing = [f for f in spec.files if not self._usable(folder, f)]
            if missing:
                self._download_files(spec, folder, missing)
        return folder / spec.path

    def load(self, model_id: str, loader: Callable[[Path], object], weights: str | os.PathLike | None = None):
        """``loader(path)`` on :meth:`ensure`'s path. A cached copy that fails to load is deleted, downloaded
        again and retried once; after a successful load the cached files' sha256 are recorded."""
        path = self.ensure(model_id, weights)
        try:
            result = self._try_load(model_id, loader, path)
        except _LoadFailed as failed:
            if not self.is_cached(path):
                raise LinGuinEError(str(failed)) from failed.__cause__
            print(f"linguine: warning: {failed}; deleting the cached copy and downloading it again", file=sys.stderr)
            self.discard(model_id)
            path = self.ensure(model_id)
            try:
                result = self._try_load(model_id, loader, path)
            except _LoadFailed as again:
                raise LinGuinEError(str(again)) from again.__cause__
        if self.is_cached(path):
            self.record(model_id)
        return result

    def _try_load(self, model_id: str, loader: Callable[[Path], object], path: Path):
        try:
            return loader(path)
        except LinGuinEError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other load failure means an unreadable weights file
            raise _LoadFailed(f"{path}: cannot load the {self.spec(model_id).name} weights "
                              f"({type(exc).__name__}: {str(exc)[:300]})") from exc

    def record(self, model_id: str) -> None:
        """Record the sha256 of the cached files of ``model_id`` (call after they loaded successfully)."""
        spec, folder = self.spec(model_id), self.model_dir(model_id)
        with self._exclusive(spec):
            records = self._records(folder)
            for f in spec.files:
                target = folder / f.path
                if target.is_file():
                    records[f.path] = {"sha256": self._hash(target), "bytes": target.stat().st_size}
            _write_json_atomic(folder / SHA_RECORD, records)

    def discard(self, model_id: str) -> None:
        """Delete the cached files (and records) of ``model_id``."""
        spec, folder = self.spec(model_id), self.model_dir(model_id)
        with self._exclusive(spec):
            for f in spec.files:
                with contextlib.suppress(FileNotFoundError):
                    (folder / f.path).unlink()
            with contextlib.suppress(FileNotFoundError):
                (folder / SHA_RECORD).unlink()

    # -- internals --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self, spec: ModelSpec):
        """Hold this manager's lock and the cross-process file lock of ``spec``'s cache folder."""
        path = self.home / "models" / f".{spec.id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            lock = FileLock(str(path))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                message = f"{spec.id}: waiting for another process that is downloading into {self.model_dir(spec.id)}"
                print(f"linguine: {message}", file=sys.stderr)
                while True:
                    if self.progress is not None and self.progress(message, 0, 0) is False:
                        raise TrackingCancelled(f"{spec.name}: cancelled while {message}") from None
                    with contextlib.suppress(Timeout):
                        lock.acquire(timeout=0.5)
                        break
            try:
                yield
            finally:
                lock.release()

    def _records(self, folder: Path) -> dict:
        try:
            return json.loads((folder / SHA_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _hash(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._verified:
            self._verified[key] = sha256_of(path)
        return self._verified[key]

    def _usable(self, folder: Path, f: ModelFile) -> bool:
        """Present and, when a sha256 was recorded, matching it; a mismatching file is deleted."""
        target = folder / f.path
        if not target.is_file():
            return False
        expected = self._records(folder).get(f.path, {}).get("sha256") or f.sha256
        if expected is None or self._hash(target) == expected:
            return True
        print(f"linguine: warning: {target} is corrupt or truncated (sha256 differs from the one recorded when it "
              "last loaded); downloading it again", file=sys.stderr)
        target.unlink()
        return False

    def _download_files(self, spec: ModelSpec, folder: Path, files: list[ModelFile]) -> None:
        if self.offline:
            raise LinGuinEError(self._manual_message(spec, folder, files, "downloads are disabled (LINGUINE_OFFLINE)"))
        if spec.show_license and not self.acknowledge(spec):
            raise LinGuinEError(f"{spec.name}: download cancelled because its license ({spec.license}) was not accepted")
        for f in files:
            self._download_one(spec, folder, f)

    def _download_one(self, spec: ModelSpec, folder: Path, f: ModelFile) -> None:
        dest = folder / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        errors = []
        for url in f.urls:
            try:
                _fetch(url, part, f"{spec.id}: {Path(f.path).name}", self.progress or tqdm_progress(),
                       f.bytes, self.timeout, self.attempts)
            except _NETWORK_ERRORS as exc:
                errors.append(f"{url} ({_reason(exc)})")
                continue
            digest = sha256_of(part)
            if f.sha256 and digest != f.sha256:
                part.unlink()
                errors.append(f"{url} (sha256 {digest} differs from the catalogue's {f.sha256})")
                continue
            os.replace(part, dest)
            self._verified[(str(dest), dest.stat().st_size, dest.stat().st_mtime_ns)] = digest
            return
        kept = f" The partial download {part} ({_human(part.stat().st_size)}) is kept and resumes next time." \
            if part.is_file() else ""
        raise LinGuinEError(self._manual_message(spec, folder, [f], "; ".join(errors)) + kept)

    def _manual_message(self, spec: ModelSpec, folder: Path, files: list[ModelFile], reason: str) -> str:
        lines = [f"cannot download the {spec.name} weights ({spec.license}): {reason}.",
                 "Download each file yourself and place it at the path shown:"]
        lines += [f"  {f.urls[0]}\n    -> {folder / f.path}" for f in files]
        lines.append("or point --weights / LINGUINE_WEIGHTS at a local copy.")
        return "\n".join(lines)


_NETWORK_ERRORS = (_Incomplete, urllib.error.URLError, http.client.HTTPException, OSError)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"no connection: {exc.reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _fetch(url: str, part: Path, label: str, progress: Progress, approx: int | None, timeout: float,
           attempts: int) -> None:
    """Download ``url`` into ``part``, resuming what is there; retries while data keeps arriving.
    Raises _Incomplete/URLError/OSError (``part`` kept) or TrackingCancelled."""
    for attempt in range(attempts):
        have = part.stat().st_size if part.is_file() else 0
        try:
            _fetch_once(url, part, have, label, progress, approx, timeout)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # our range starts at or past the end: the part is stale or complete
                total = _content_range_total(exc.headers.get("Content-Range", ""))
                if total == have:
                    return
                part.unlink()
                continue
            raise
        except _NETWORK_ERRORS:
            grew = part.is_file() and part.stat().st_size > have
            if attempt == attempts - 1 or not grew:
                raise


def _fetch_once(url, part: Path, have: int, label, progress, approx, timeout) -> None:
    headers = {"User-Agent": f"linguine/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        length = resp.headers.get("Content-Length")
        if have and resp.status == 206:
            start = _content_range_start(resp.headers.get("Content-Range", ""))
            if start != have:
                part.unlink()
                raise _Incomplete(f"server resumed at byte {start}, expected {have}")
            total = _content_range_total(resp.headers.get("Content-Range", ""))
        else:  # a full response: start again from zero
            have = 0
            total = int(length) if length else None
        expected = total or approx or 0
        done = have
        if progress(label, done, expected) is False:
            raise TrackingCancelled(f"download of {url} cancelled")
        with open(part, "ab" if have else "wb") as fh:
            for block in iter(lambda: resp.read(_CHUNK), b""):
                fh.write(block)
                done += len(block)
                if progress(label, done, expected) is False:
                    raise TrackingCancelled(f"download of {url} cancelled; the partial file {part} resumes next time")
            fh.flush()
            os.fsync(fh.fileno())
    if total is not None and done != total:
        raise _Incomplete(f"got {done} of {total} bytes")


def _content_range_start(value: str) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value.strip())
    return int(m.group(1)) if m else None


def _content_range_total(value: str) -> int | None:
    m = re.search(r"/(\d+)\s*$", value.strip())
    return int(m.group(1)) if m else None


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


_default_manager: ModelManager | None = None
_default_lock = threading.Lock()


def default_manager(progress: Progress | None = None) -> ModelManager:
    """A process-wide manager on :func:`linguine_home` (a new one when ``progress`` is given)."""
    global _default_manager
    if progress is not None:
        return ModelManager(progress=progress)
    with _default_lock:
        if _default_manager is None or _default_manager.home != linguine_home():
            _default_manager = ModelManager()
        return _default_manager
