"""The engine service's wire format: the one place server and client agree on (both import only this).

* **Messages** are either JSON (requests, status, errors) or a *pack*: ``b"LGE1"``, a big-endian uint32
  header length, a UTF-8 JSON header, then the concatenation of the raw (C-order, little-endian)
  bytes of the arrays the header lists under ``"arrays"`` (``dtype``, ``shape``), zlib-compressed
  when the header's ``"encoding"`` is ``"zlib"`` (the default; ``"raw"`` saves the CPU time on loopback).
* **Scans** travel as a pack of one array ``[k, j, i]`` whose header holds the geometry: ``origin``
  (LPS mm), ``spacing`` (mm, (i, j, k) order), ``direction`` (3x3, row-major, columns = i, j, k axes in
  LPS). A scan is addressed by :func:`scan_hash` (sha256 over dtype, shape, array bytes and geometry),
  so a second upload of the same scan costs nothing.
* **Masks** travel cropped to their bounding box: ``offset`` [k, j, i] of the crop's first voxel in the
  scan plus the bool crop (:func:`crop_mask` / :func:`uncrop_mask`).
* **Points** are LPS mm, lists of 3 floats.
* **Errors** are JSON ``{"error": message}`` (:func:`error_body`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import struct
import zlib

import numpy as np

from LinGuinELib.core.errors import InputError
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.core.tracking import Observation
from LinGuinELib.segmentation.base import CONFIDENCES

PROTOCOL_VERSION = 1
MAGIC = b"LGE1"
PACK_CONTENT_TYPE = "application/x-linguine-pack"
# Voxel types a scan or mask may have (little-endian on the wire).
DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "int32", "uint32", "float32", "float64")
MAX_HEADER_BYTES = 16 << 20


class ProtocolError(InputError):
    """A message that does not follow this protocol (the server answers 400 with the message)."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error_body(message: str) -> dict:
    return {"error": str(message)}


# -- packs -------------------------------------------------------------------------------------
def pack(header: dict, arrays: list[np.ndarray] = (), compress: bool = True) -> bytes:
    """``header`` (JSON-able) and ``arrays`` as one message (zlib level 1 unless ``compress`` is False);
    ``header["arrays"]`` and ``header["encoding"]`` are set here."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    for a in arrays:
        if a.dtype.name not in DTYPES:
            raise ProtocolError(f"array dtype {a.dtype} cannot be sent; allowed: {', '.join(DTYPES)}")
    head = dict(header, arrays=[{"dtype": a.dtype.name, "shape": list(a.shape)} for a in arrays],
                encoding="zlib" if compress else "raw")
    text = json.dumps(head, separators=(",", ":")).encode()
    raw = [a.astype(a.dtype.newbyteorder("<"), copy=False).data for a in arrays]
    if not compress:
        return b"".join([MAGIC, struct.pack(">I", len(text)), text, *raw])
    comp = zlib.compressobj(1)
    return b"".join([MAGIC, struct.pack(">I", len(text)), text, *(comp.compress(r) for r in raw), comp.flush()])


def unpack(data: bytes, max_bytes: int | None = None) -> tuple[dict, list[np.ndarray]]:
    """(header, arrays) from :func:`pack` output; the arrays' total size is checked against ``max_bytes``
    before anything is decompressed (no zip bombs). Raises :class:`ProtocolError` with the reason."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise ProtocolError("not a LinGuinE array message (bad magic bytes); send scans with LinGuinE's EngineClient")
    (n,) = struct.unpack(">I", data[4:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise ProtocolError(f"array message header length {n} is impossible for a {len(data)}-byte message")
    try:
        header = json.loads(data[8:8 + n])
        specs = header["arrays"]
        dtypes = [np.dtype(s["dtype"]).newbyteorder("<") for s in specs]
        shapes = [tuple(int(v) for v in s["shape"]) for s in specs]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"array message header is not valid: {exc}") from None
    for s, shape in zip(specs, shapes):
        if s["dtype"] not in DTYPES:
            raise ProtocolError(f"array dtype {s['dtype']!r} is not allowed; allowed: {', '.join(DTYPES)}")
        if any(v < 0 for v in shape):
            raise ProtocolError(f"array shape {list(shape)} has a negative size")
    sizes = [int(np.prod(shape, dtype=np.int64)) * dt.itemsize for shape, dt in zip(shapes, dtypes)]
    total = sum(sizes)
    if max_bytes is not None and total > max_bytes:
        raise ProtocolError(f"arrays of {total / 2**20:.0f} MiB exceed this server's limit of {max_bytes / 2**20:.0f} MiB")
    encoding = header.get("encoding", "zlib")
    if encoding == "raw":
        raw = memoryview(data)[8 + n:]
        if len(raw) != total:
            raise ProtocolError(f"array data holds {len(raw)} bytes, the header declares {total}")
    elif encoding == "zlib":
        dec = zlib.decompressobj()
        try:
            raw = dec.decompress(memoryview(data)[8 + n:], total + 1)
        except zlib.error as exc:
            raise ProtocolError(f"array data is not valid zlib data ({exc})") from None
        if len(raw) != total or dec.unconsumed_tail:
            raise ProtocolError(f"array data holds {len(raw)}{'+' if dec.unconsumed_tail else ''} bytes, "
                                f"the header declares {total}")
    else:
        raise ProtocolError(f"unknown array encoding {encoding!r}; use 'zlib' or 'raw'")
    arrays, at = [], 0
    for shape, dt, size in zip(shapes, dtypes, sizes):
        arrays.append(np.frombuffer(raw, dtype=dt, count=size // dt.itemsize,
                                    offset=at).reshape(shape).astype(dt.newbyteorder("="), copy=True))
        at += size
    return header, arrays


# -- scans -------------------------------------------------------------------------------------
def geometry(origin, spacing, direction) -> dict:
    """JSON geometry of a scan (see the module doc for conventions)."""
    return {"origin": [float(v) for v in np.asarray(origin, float).reshape(3)],
            "spacing": [float(v) for v in np.asarray(spacing, float).reshape(3)],
            "direction": [float(v) for v in np.asarray(direction, float).reshape(9)]}


def scan_hash(array: np.ndarray, origin, spacing, direction) -> str:
    """sha256 hex digest of a scan's dtype, shape, voxel bytes and geometry: its address on the server."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(f"{array.dtype.newbyteorder('<').str}{list(array.shape)}".encode())
    h.update(array.astype(array.dtype.newbyteorder("<"), copy=False).data)
    geo = geometry(origin, spacing, direction)
    h.update(np.asarray(geo["origin"] + geo["spacing"] + geo["direction"], dtype="<f8").tobytes())
    return h.hexdigest()


def pack_scan(scan, compress: bool = True) -> tuple[str, bytes]:
    """(hash, pack) of a :class:`~LinGuinELib.core.study.Scan`'s voxels and geometry (not its id or date)."""
    digest = scan_hash(scan.array, scan.origin, scan.spacing, scan.direction)
    return digest, pack({"kind": "scan", "hash": digest, **geometry(scan.origin, scan.spacing, scan.direction)},
                        [scan.array], compress)


def validate_scan(header: dict, arrays: list[np.ndarray], expected_hash: str) -> tuple[np.ndarray, dict]:
    """(array, geometry) of an uploaded scan after checking shape, values, geometry and hash."""
    if header.get("kind") != "scan" or len(arrays) != 1:
        raise ProtocolError("a scan upload holds exactly one array with kind 'scan'")
    array = arrays[0]
    if array.ndim != 3 or min(array.shape) < 1:
        raise ProtocolError(f"a scan must be a non-empty 3-D array [k, j, i], got shape {list(array.shape)}")
    if array.dtype == bool:
        raise ProtocolError("a scan must hold intensities, not a bool mask")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ProtocolError("the scan contains NaN or infinite voxels")
    try:
        origin = np.asarray(header["origin"], float).reshape(3)
        spacing = np.asarray(header["spacing"], float).reshape(3)
        direction = np.asarray(header["direction"], float).reshape(3, 3)
    except (KeyError, ValueError, TypeError):
        raise ProtocolError("scan geometry needs origin (3), spacing (3) and direction (9) numbers") from None
    if not (np.isfinite(origin).all() and np.isfinite(direction).all() and np.isfinite(spacing).all()):
        raise ProtocolError("scan geometry holds NaN or infinite numbers")
    if not ((spacing > 1e-4).all() and (spacing < 1e3).all()):
        raise ProtocolError(f"scan spacing {spacing.tolist()} mm is not between 0.0001 and 1000 mm")
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        raise ProtocolError(f"scan direction {direction.ravel().round(4).tolist()} is not a rotation (orthonormal columns)")
    digest = scan_hash(array, origin, spacing, direction)
    if digest != expected_hash:
        raise ProtocolError(f"scan content hash is {digest}, not the {expected_hash} it was uploaded as "
                            "(data corrupted in transit?)")
    return array, geometry(origin, spacing, direction)


# -- masks, lesions, observations ----------------------------------------------------------------
def crop_mask(mask: np.ndarray) -> tuple[list[int], np.ndarray]:
    """(offset [k, j, i], bool crop) of a mask's bounding box; an empty mask gives a (0, 0, 0) crop."""
    mask = np.asarray(mask, dtype=bool)
    hits = np.argwhere(mask)
    if len(hits) == 0:
        return [0, 0, 0], np.zeros((0, 0, 0), dtype=bool)
    lo, hi = hits.min(axis=0), hits.max(axis=0) + 1
    return [int(v) for v in lo], mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].copy()


def uncrop_mask(offset, crop: np.ndarray, shape) -> np.ndarray:
    """The full bool mask of ``shape`` from :func:`crop_mask` output (checks that the crop fits)."""
    offset = [int(v) for v in offset]
    crop = np.asarray(crop, dtype=bool)
    if crop.ndim != 3 or len(offset) != 3:
        raise ProtocolError(f"a mask crop must be 3-D with a 3-number offset, got shape {list(crop.shape)}")
    if any(o < 0 or o + c > s for o, c, s in zip(offset, crop.shape, shape)):
        raise ProtocolError(f"mask crop at offset {offset} with shape {list(crop.shape)} does not fit a scan of "
                            f"shape {list(shape)}")
    out = np.zeros(tuple(shape), dtype=bool)
    out[offset[0]:offset[0] + crop.shape[0], offset[1]:offset[1] + crop.shape[1],
        offset[2]:offset[2] + crop.shape[2]] = crop
    return out


def point(value, what: str) -> np.ndarray:
    """One LPS point (3 finite floats) from JSON."""
    try:
        p = np.asarray(value, dtype=float).reshape(3)
    except (ValueError, TypeError):
        raise ProtocolError(f"{what} must be 3 numbers (LPS mm), got {value!r}") from None
    if not np.isfinite(p).all():
        raise ProtocolError(f"{what} must be finite numbers (LPS mm), got {value!r}")
    return p


def points(value, what: str) -> np.ndarray:
    """(N, 3) LPS points from JSON (N may be 0)."""
    if value is None:
        return np.zeros((0, 3))
    if not isinstance(value, list):
        raise ProtocolError(f"{what} must be a list of [x, y, z] points (LPS mm)")
    return np.array([point(v, what) for v in value]).reshape(-1, 3)


def _opt_list(p) -> list[float] | None:
    return None if p is None else [float(v) for v in np.asarray(p, float).reshape(3)]


def lesion_from_json(d) -> Lesion:
    if not isinstance(d, dict) or "lesion_id" not in d:
        raise ProtocolError("a lesion needs at least a lesion_id")
    try:
        return Lesion.from_dict(d)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"bad lesion {d!r}: {exc}") from None


def observation_to_json(obs: Observation, arrays: list[np.ndarray]) -> dict:
    """JSON of an observation; its mask is cropped and appended to ``arrays`` (index in ``mask``)."""
    d = {"lesion_id": obs.lesion_id, "scan_id": obs.scan_id, "status": obs.status,
         "point_lps": _opt_list(obs.point_lps), "propagated_lps": _opt_list(obs.propagated_lps),
         "propagated_from": obs.propagated_from, "confidence": obs.confidence, "mask": None, "offset": None}
    if obs.mask is not None:
        d["offset"], crop = crop_mask(obs.mask)
        d["mask"] = len(arrays)
        arrays.append(crop)
    return d


def observation_from_json(d: dict, arrays: list[np.ndarray], shape) -> Observation:
    """Inverse of :func:`observation_to_json` for a scan of ``shape``."""
    mask = None
    if d.get("mask") is not None:
        index = int(d["mask"])
        if not 0 <= index < len(arrays):
            raise ProtocolError(f"observation mask index {index} names no array of the message")
        mask = uncrop_mask(d["offset"], arrays[index], shape)
    confidence = d.get("confidence") or ""
    if confidence not in CONFIDENCES:
        raise ProtocolError(f"observation confidence {confidence!r} is not one of {CONFIDENCES}")
    return Observation(
        lesion_id=int(d["lesion_id"]), scan_id=str(d["scan_id"]), status=str(d["status"]),
        point_lps=None if d.get("point_lps") is None else point(d["point_lps"], "point_lps"),
        mask=mask, propagated_from=d.get("propagated_from"), confidence=confidence,
        propagated_lps=None if d.get("propagated_lps") is None else point(d["propagated_lps"], "propagated_lps"))


def result_to_pack(result) -> bytes:
    """A :class:`~LinGuinELib.core.tracking.TrackingResult` as a pack: lesions, every observation (cropped
    masks), the run's stats, and the measurement rows and summary computed on the server."""
    from LinGuinELib.core.measure import measurement_rows

    arrays: list[np.ndarray] = []
    observations = [observation_to_json(o, arrays) for per in result.observations.values() for o in per.values()]
    summary = json.loads(json.dumps(result.summary(), default=str))
    return pack({"kind": "tracking_result", "lesions": [l.to_dict() for l in result.lesions],
                 "observations": observations, "stats": result.stats, "rows": measurement_rows(result),
                 "summary": summary}, arrays)
