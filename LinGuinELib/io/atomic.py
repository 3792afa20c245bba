"""Atomic file output: write to a temporary file in the target folder, then ``os.replace``.

An interrupted run never leaves a half-written file; :func:`staged_outputs` extends this to a set of
files that appear together or not at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import SimpleITK as sitk

from LinGuinELib.core.errors import InputError


def _suffix(path: Path) -> str:
    """Full extension, so writers that choose the format by name keep working (``.nii.gz``)."""
    return "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + _suffix(path), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs):
    """``open()`` replacement whose file appears at ``path`` only once fully written."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh


def write_image_atomic(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a SimpleITK image atomically (format from the file name, e.g. ``.nii.gz``, ``.nrrd``)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return Path(path)


def check_out_dir(out_dir: str | os.PathLike, what: str = "output folder") -> Path:
    """``out_dir`` as a Path; InputError naming it if it, or a folder above it, is an existing non-folder."""
    out_dir = Path(out_dir)
    for path in (out_dir, *out_dir.parents):
        if path.exists() and not path.is_dir():
            where = "" if path == out_dir else f" (inside {path}, which is a file)"
            raise InputError(f"{out_dir}: {what} cannot be created{where or ': a file of that name exists'}; "
                             "nothing was written")
    return out_dir


@contextlib.contextmanager
def staged_outputs(out_dir: str | os.PathLike):
    """Yield a staging folder; on success its files move into ``out_dir`` (created then), on error it is
    deleted and ``out_dir`` is left untouched."""
    out_dir = check_out_dir(out_dir)
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=parent))
    try:
        yield staging
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in sorted(staging.rglob("*")):
            if item.is_file():
                dest = out_dir / item.relative_to(staging)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike):
    """Yield a staging folder beside ``folder``; on success it is renamed to ``folder`` in one step (so the
    folder appears complete or not at all), on error it is deleted. ``folder`` must not exist yet."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    try:
        yield staging
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(parent: str | os.PathLike) -> list[Path]:
    """Delete staging folders left in ``parent`` by a killed process (see :func:`staged_folder`)."""
    stale = [p for p in Path(parent).glob(".*.staging-*") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale
