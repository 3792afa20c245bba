"""``linguine demo`` and its sample data: offline download/extraction logic on a fake archive, the demo's
outputs on a small synthetic CT with fast backends, and (slow) the real demo with the CPU defaults."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time

import numpy as np
import pytest
import SimpleITK as sitk

from LinGuinELib import backends, cli
from LinGuinELib.research import sample_data
from LinGuinELib.core.errors import LinGuinEError

TOP = "pyradiomics-3.0.1"


def _tarball(path, members: dict[str, bytes], links: dict[str, str] | None = None):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def _fake_sdist(tmp_path, image=b"IMAGE", label=b"LABEL"):
    return _tarball(tmp_path / sample_data.SDIST, {
        f"{TOP}/setup.py": b"raise SystemExit('archive code must never run')",
        f"{TOP}/data/lung2_image.nrrd": image,
        f"{TOP}/data/lung2_label.nrrd": label,
        f"{TOP}/data/lung1_image.nrrd": b"other",
        f"../data/lung2_image.nrrd": b"escape",
    }, links={f"{TOP}/data/evil.nrrd": "/etc/passwd"})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_extract_reads_only_the_two_files_and_checks_them(tmp_path):
    archive = _fake_sdist(tmp_path)
    dest = tmp_path / "cache"
    expected = {"lung2_image.nrrd": _sha(b"IMAGE"), "lung2_label.nrrd": _sha(b"LABEL")}
    written = sample_data.extract_files(archive, dest, expected)
    assert sorted(p.name for p in written) == ["lung2_image.nrrd", "lung2_label.nrrd"]
    assert sorted(p.name for p in dest.iterdir()) == ["lung2_image.nrrd", "lung2_label.nrrd"]
    assert (dest / "lung2_image.nrrd").read_bytes() == b"IMAGE"
    assert not (tmp_path / "data").exists()  # the '../data/...' member went nowhere
    # A tampered file is refused and leaves nothing behind.
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(LinGuinEError, match="SHA-256"):
        sample_data.extract_files(_fake_sdist(bad, image=b"TAMPERED"), bad / "cache", expected)
    assert not any(p.name.startswith("lung2_image") for p in (bad / "cache").iterdir())


def test_extract_rejects_links_and_archives_without_the_files(tmp_path):
    archive = _tarball(tmp_path / "x.tar.gz", {f"{TOP}/data/lung2_label.nrrd": b"L"},
                       links={f"{TOP}/data/lung2_image.nrrd": "/etc/passwd"})
    with pytest.raises(LinGuinEError, match="lung2_image"):
        sample_data.extract_files(archive, tmp_path / "cache", {"lung2_image.nrrd": None, "lung2_label.nrrd": None})


@pytest.fixture
def no_local_ct(tmp_path, monkeypatch):
    """A user's fresh machine: no ../shared/data/ct anywhere, an empty cache under LINGUINE_HOME."""
    monkeypatch.delenv("LINGUINE_CT_DIR", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setenv("LINGUINE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sample_data, "REPO", tmp_path / "checkout" / "repo")
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    return tmp_path / "home" / "sample-data"


def test_download_into_the_user_cache_once(tmp_path, no_local_ct, monkeypatch):
    archive = _fake_sdist(tmp_path).read_bytes()
    monkeypatch.setattr(sample_data, "SDIST_SHA256", _sha(archive))
    monkeypatch.setattr(sample_data, "FILES", {"lung2_image.nrrd": _sha(b"IMAGE"), "lung2_label.nrrd": _sha(b"LABEL")})
    requests = []

    def fetch(url):
        requests.append(url)
        if url.endswith("/pyradiomics/"):
            return (f'<a href="../../packages/ab/cd/{sample_data.SDIST}#sha256={_sha(archive)}">'
                    f"{sample_data.SDIST}</a>").encode()
        return archive

    messages = []
    image, label = sample_data.lung2_paths(log=messages.append, fetch=fetch)
    assert image == no_local_ct / "lung2_image.nrrd" and label.read_bytes() == b"LABEL"
    assert requests == ["https://pypi.org/simple/pyradiomics/", f"https://pypi.org/packages/ab/cd/{sample_data.SDIST}"]
    assert "PyPI" in messages[0] and str(no_local_ct) in messages[0] and "no code" in messages[0]
    assert sorted(p.name for p in no_local_ct.iterdir()) == ["lung2_image.nrrd", "lung2_label.nrrd"]
    # Cached: a second call fetches nothing.
    assert sample_data.lung2_paths(log=messages.append, fetch=lambda url: pytest.fail(url)) == (image, label)


def test_corrupt_download_keeps_nothing(tmp_path, no_local_ct):
    def fetch(url):
        if url.endswith("/pyradiomics/"):
            return f'<a href="https://files.example/{sample_data.SDIST}">x</a>'.encode()
        return b"not the archive"

    with pytest.raises(LinGuinEError, match="SHA-256"):
        sample_data.lung2_paths(log=lambda m: None, fetch=fetch)
    assert not any(no_local_ct.iterdir())


def test_local_ct_dir_wins(tmp_path, no_local_ct, monkeypatch):
    folder = tmp_path / "ct"
    folder.mkdir()
    for name in ("lung2_image.nrrd", "lung2_label.nrrd"):
        (folder / name).write_bytes(b"x")
    monkeypatch.setenv("LINGUINE_CT_DIR", str(folder))
    assert sample_data.lung2_paths(fetch=lambda url: pytest.fail(url))[0] == folder / "lung2_image.nrrd"


def _table(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in stdout.splitlines() if re.match(r"t\d\s", line)}


def test_demo_outputs_on_a_small_ct(tmp_path, scan_factory, monkeypatch, capsys):
    """The demo's wiring, fast: a small synthetic 'CT' instead of lung2, identity + threshold backends."""
    scan = scan_factory(shape=(24, 64, 64), spacing=(1.0, 1.0, 2.0), blobs=(((12, 32, 32), 9.0),))
    image, label = tmp_path / "ct_image.nrrd", tmp_path / "ct_label.nrrd"
    sitk.WriteImage(sitk.Cast(scan.to_sitk(), sitk.sitkInt16), str(image))
    sitk.WriteImage(scan.to_sitk(scan.label.astype(np.uint8)), str(label))
    monkeypatch.setattr(sample_data, "lung2_paths", lambda log=print, fetch=None: (image, label))
    monkeypatch.setitem(backends.SEGMENTERS, "threshold", ("fakes", "ThresholdSegmenter"))
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--scans", "3", "--registration", "identity", "--segmentation", "threshold"]
    assert cli.main(args) == 0
    stdout = capsys.readouterr().out
    table = _table(stdout)
    assert sorted(table) == ["t0", "t1", "t2"]
    assert table["t1"][2] == "source"  # the middle timepoint was clicked
    assert all(0.0 <= float(row[-1]) <= 1.0 for row in table.values())
    for name in ("lesions.csv", "summary.json", "overview.png", "t0.nii.gz", "t2.nii.gz", "study/study.csv"):
        assert (out / name).is_file(), name
    assert (out / "overview.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["demo"]["source_scan"] == "t1" and set(summary["demo"]["dice"]) == {"t0", "t1", "t2"}
    # The study is reused on a second run with the same settings (same files, not regenerated).
    stamp = (out / "study" / "t2_image.nii.gz").stat().st_mtime_ns
    assert cli.main(args) == 0
    assert (out / "study" / "t2_image.nii.gz").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_real_demo_with_cpu_defaults(ct_dir, tmp_path, capsys):
    pytest.importorskip("LinGuinELib.registration.sitk")
    pytest.importorskip("LinGuinELib.segmentation.classic")
    start = time.perf_counter()
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 0
    seconds = time.perf_counter() - start
    table = _table(capsys.readouterr().out)
    assert sorted(table) == ["t0", "t1", "t2", "t3"] and table["t1"][2] == "source"
    dice = {sid: float(row[-1]) for sid, row in table.items()}
    assert all(row[2] in ("source", "found") for row in table.values())
    assert np.median([dice[s] for s in ("t0", "t2", "t3")]) >= 0.7, dice
    assert (tmp_path / "demo" / "overview.png").is_file()
    print(f"demo wall time {seconds:.0f} s")
