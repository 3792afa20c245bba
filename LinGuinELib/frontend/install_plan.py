"""What a front end must install before a tracking run, and how big that is (no Slicer imports).

The Slicer module keeps one requirements file per need in its ``Resources`` folder:
``requirements.txt`` (the engine's runtime packages that Slicer does not bundle) and
``requirements-<module>.txt`` for backends whose module (``LinGuinELib/<kind>/<module>.py``) needs more.
Torch comes from the PyTorch extension, never from these files, and the packages Slicer owns are
never installed over (:data:`NEVER_INSTALL`). Sizes are approximate installed sizes, measured on Linux
with Python 3.12 (package plus the dependencies Slicer does not bundle); they are shown to the user
before anything is installed.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Callable

from LinGuinELib.backends import backend_entry
from LinGuinELib.frontend.settings import Settings

# Slicer's own packages (and torch, which the PyTorch extension installs): pip must never replace them.
NEVER_INSTALL = ("SimpleITK", "numpy", "vtk", "torch", "torchvision")
# The torch versions the deep-learning backends accept (the same range as pyproject's "gpu" extra).
TORCH_REQUIREMENT = ">=2.1.2,!=2.9.*,<2.15"
TORCH_APPROX_MB = 4600  # CUDA build on Linux, measured; CPU-only builds are several times smaller

APPROX_INSTALLED_MB = {
    "connected-components-3d": 19, "scikit-image": 54, "tqdm": 1, "filelock": 1, "scipy": 143, "pydicom": 10,
    "highdicom": 36, "unigradicon": 1740, "icon-registration": 1740, "nninteractive": 500, "monai": 16,
}


def backend_module(kind: str, name: str) -> str:
    """The last part of a backend's module name (``sitk``, ``gradicon``, ``nninteractive``...)."""
    return backend_entry(kind, name).module.rsplit(".", 1)[-1]


def requirement_files(resources: str | Path, registration: str, segmentation: str) -> list[Path]:
    """The requirements files a run with these backends needs (base first; backend files if present)."""
    resources = Path(resources)
    files = [resources / "requirements.txt"]
    for kind, name in (("registration", registration), ("segmentation", segmentation)):
        extra = resources / f"requirements-{backend_module(kind, name)}.txt"
        if extra.is_file() and extra not in files:
            files.append(extra)
    return files


def needs_torch(resources: str | Path, registration: str, segmentation: str) -> bool:
    """True when a chosen backend has its own requirements file, i.e. is a deep-learning backend."""
    return len(requirement_files(resources, registration, segmentation)) > 1


def read_requirements(path: str | Path) -> list[str]:
    """Requirement strings of a requirements file (comments, blank lines and pip options skipped),
    the same lines ``slicer.packaging.load_requirements`` reads."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s for s in (line.strip() for line in lines) if s and not s.startswith(("#", "-"))]


def missing_requirements(requirements: list[str],
                         version_of: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """The requirements not satisfied by the installed versions (markers evaluated, extras ignored)."""
    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = version_of(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if not req.specifier.contains(installed, prereleases=True):
            missing.append(text)
    return missing


def approx_mb(requirement: str) -> int | None:
    """Approximate installed size (MB) of one requirement with its dependencies, if known."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return APPROX_INSTALLED_MB.get(canonicalize_name(Requirement(requirement).name))


def install_summary(missing: list[str], torch_missing: bool) -> tuple[str, int]:
    """(one line per item to install with its approximate size, approximate total MB)."""
    lines, total = [], 0
    if torch_missing:
        lines.append(f"- torch{TORCH_REQUIREMENT} and torchvision, through the PyTorch extension "
                     f"(about {TORCH_APPROX_MB / 1000:.1f} GB with CUDA, less for a CPU-only build)")
        total += TORCH_APPROX_MB
    for req in missing:
        mb = approx_mb(req)
        lines.append(f"- {req} (about {_size(mb)} with its dependencies)" if mb else f"- {req}")
        total += mb or 0
    return "\n".join(lines), total


def _size(mb: int) -> str:
    return f"{mb / 1000:.1f} GB" if mb >= 1000 else f"{mb} MB"


def models_to_download(manager, settings: Settings) -> list:
    """Catalogue entries (:class:`~LinGuinELib.backends.models.ModelSpec`) the chosen backends need that are neither
    in the local weights folder nor fully in ``manager``'s cache (model ids are backend names)."""
    specs = []
    for name in dict.fromkeys((settings.registration, settings.segmentation)):
        if name not in manager.catalogue or manager.locate_local(name, settings.weights) is not None:
            continue
        spec, folder = manager.spec(name), manager.model_dir(name)
        if not all((folder / f.path).is_file() for f in spec.files):
            specs.append(spec)
    return specs


def constraints_text(version_of: Callable[[str], str] = importlib.metadata.version) -> str:
    """A pip constraints file pinning the installed packages of :data:`NEVER_INSTALL` to their installed
    versions, so resolving new requirements can never replace them (pip's own mechanism, instead of
    ``skip_packages``, which Slicer's ``pip_ensure`` documents as a discouraged workaround)."""
    lines = []
    for name in NEVER_INSTALL:
        try:
            lines.append(f"{name}=={version_of(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


def restart_needed_for_torch(torch_missing: bool, imported_modules) -> bool:
    """True when torch would be installed or replaced while a torch is already imported in this
    process: the old one stays loaded until Slicer restarts, so restart first."""
    return bool(torch_missing) and "torch" in set(imported_modules)
