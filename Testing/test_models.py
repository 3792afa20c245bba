"""Model manager against a local HTTP server on 127.0.0.1: progress, atomic and resumable downloads,
corruption detection through recorded sha256, offline errors, license notice, cache folder, local weights."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from LinGuinELib.backends import models
from LinGuinELib.core.errors import InputError, LinGuinEError, TrackingCancelled
from LinGuinELib.backends.models import ModelFile, ModelManager, ModelSpec

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SMALL = b'{"plans": true}'


class Server:
    """Serves ``files`` with Range support; ``cut_after`` bytes ends the next ``cuts`` responses early."""

    def __init__(self):
        self.files = {"/w.bin": PAYLOAD, "/model/plans.json": SMALL, "/model/fold_0/ckpt.pth": PAYLOAD[:5000]}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after, self.cuts, self.ranges = 0, 0, True
        self.hold: threading.Event | None = None  # set: responses pause after their first 64 kiB until it is set
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng and server.ranges else 0
                if start >= len(body) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if server.cuts:
                    server.cuts -= 1
                    chunk = chunk[:server.cut_after]
                    self.close_connection = True
                piece = 1 << 16
                for i in range(0, len(chunk), piece):
                    self.wfile.write(chunk[i:i + piece])
                    if server.hold is not None:
                        server.hold.wait(timeout=60)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def catalogue(url):
    return {
        "single": ModelSpec("single", "Single file model", "Apache-2.0", "https://example.org/l", "w.bin",
                            (ModelFile("w.bin", (f"{url}/w.bin",), len(PAYLOAD)),)),
        "folder": ModelSpec("folder", "Folder model", "CC BY-NC-SA 4.0", "https://example.org/cc", "model",
                            (ModelFile("model/plans.json", (f"{url}/model/plans.json",)),
                             ModelFile("model/fold_0/ckpt.pth", (f"{url}/model/fold_0/ckpt.pth",))),
                            show_license=True, notice="Non-commercial use only."),
    }


def manager(tmp_path, server, **kw):
    kw.setdefault("acknowledge", lambda spec: True)
    return ModelManager(home=tmp_path / "cache", catalogue=catalogue(server.url), **kw)


def test_download_reports_progress_and_lands_atomically(tmp_path, server):
    seen = []
    m = manager(tmp_path, server, progress=lambda msg, done, total: seen.append((msg, done, total)))
    path = m.ensure("single")
    assert path == tmp_path / "cache" / "models" / "single" / "w.bin"
    assert path.read_bytes() == PAYLOAD and not path.with_name("w.bin.part").exists()
    assert seen[-1][1:] == (len(PAYLOAD), len(PAYLOAD)) and "w.bin" in seen[-1][0]
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen) and len(seen) > 1
    m.ensure("single")
    assert len(server.requests) == 1  # cached: no second download


def test_interrupted_download_leaves_no_corrupt_file_and_resumes(tmp_path, server):
    server.cut_after, server.cuts = 300_000, 10
    m = manager(tmp_path, server, attempts=1)
    with pytest.raises(LinGuinEError, match="resumes next time") as err:
        m.ensure("single")
    final = tmp_path / "cache" / "models" / "single" / "w.bin"
    assert str(final) in str(err.value)
    assert not final.exists()  # never a truncated file under the final name
    assert final.with_name("w.bin.part").stat().st_size == 300_000
    server.cuts = 0
    assert m.ensure("single").read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/w.bin", "bytes=300000-")  # resumed, not restarted


def test_a_dropped_connection_is_resumed_within_one_call(tmp_path, server):
    server.cut_after, server.cuts = 123_456, 2
    assert manager(tmp_path, server).ensure("single").read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=123456-", "bytes=246912-"]


def test_server_without_range_support_restarts_cleanly(tmp_path, server):
    server.cut_after, server.cuts, server.ranges = 200_000, 1, False
    assert manager(tmp_path, server).ensure("single").read_bytes() == PAYLOAD


def test_cancel_from_the_progress_callback_keeps_the_partial_file(tmp_path, server):
    m = manager(tmp_path, server, progress=lambda msg, done, total: done < 500_000)
    with pytest.raises(TrackingCancelled):
        m.ensure("single")
    part = tmp_path / "cache" / "models" / "single" / "w.bin.part"
    assert 0 < part.stat().st_size < len(PAYLOAD)
    assert not part.with_name("w.bin").exists()


CHILD = """
import sys
from LinGuinELib.backends.models import ModelManager, load_catalogue
m = ModelManager(home=sys.argv[1], catalogue=load_catalogue(sys.argv[2]), acknowledge=lambda spec: True,
                 progress=lambda message, done, total: None)
print(m.ensure("single"))
"""


def test_two_processes_share_one_download(tmp_path, server):
    """A second process (another CLI run, or Slicer) waits for the first one's download instead of
    writing the same .part file, then uses the finished file."""
    server.hold = threading.Event()
    spec = catalogue(server.url)["single"]
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"models": [{
        "id": spec.id, "name": spec.name, "license": spec.license, "license_url": spec.license_url, "path": spec.path,
        "files": [{"path": f.path, "urls": list(f.urls), "bytes": f.bytes} for f in spec.files]}]}))
    run = lambda: subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "cache"), str(path)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = run()
    deadline = time.monotonic() + 60
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run()  # starts while the first one's download is held
    waiting, lines = "", queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in second.stderr], daemon=True).start()
    with contextlib.suppress(queue.Empty):
        waiting = lines.get(timeout=30)
    server.hold.set()
    outs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0]
    assert "waiting for another process that is downloading" in waiting
    final = tmp_path / "cache" / "models" / "single" / "w.bin"
    assert [out.strip() for out in outs] == [str(final)] * 2
    assert final.read_bytes() == PAYLOAD and not final.with_name("w.bin.part").exists()
    assert server.requests == [("/w.bin", None)]  # one download, never two writers on one .part


def test_waiting_for_another_download_can_be_cancelled(tmp_path, server):
    from filelock import FileLock

    seen = []
    m = manager(tmp_path, server, progress=lambda msg, done, total: seen.append(msg) or len(seen) < 3)
    (tmp_path / "cache" / "models").mkdir(parents=True)
    with FileLock(str(tmp_path / "cache" / "models" / ".single.lock")):  # "another process" is downloading
        with pytest.raises(TrackingCancelled, match="waiting for another process"):
            m.ensure("single")
    assert len(seen) == 3 and not server.requests


def test_corrupted_cached_file_is_detected_and_downloaded_again(tmp_path, server, capsys):
    m = manager(tmp_path, server)
    m.load("single", lambda p: p.read_bytes())  # a successful load records the sha256
    path = m.ensure("single")
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))
    assert ModelManager(home=tmp_path / "cache", catalogue=m.catalogue).ensure("single").read_bytes() == PAYLOAD
    assert len(server.requests) == 2 and "corrupt or truncated" in capsys.readouterr().err
    path.write_bytes(PAYLOAD[:1000])  # truncated
    assert manager(tmp_path, server).ensure("single").read_bytes() == PAYLOAD
    assert len(server.requests) == 3


def test_a_cached_file_that_fails_to_load_is_replaced(tmp_path, server):
    m = manager(tmp_path, server)
    path = m.ensure("single")
    path.write_bytes(b"garbage, never loaded successfully")
    loaded = m.load("single", lambda p: p.read_bytes() if p.read_bytes() == PAYLOAD else int("not a number"))
    assert loaded == PAYLOAD and len(server.requests) == 2
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert digest in (path.parent / models.SHA_RECORD).read_text()


def test_offline_and_unreachable_errors_name_url_and_path(tmp_path, server):
    dest = tmp_path / "cache" / "models" / "folder" / "model" / "fold_0" / "ckpt.pth"
    with pytest.raises(LinGuinEError) as err:
        manager(tmp_path, server, offline=True).ensure("folder")
    assert f"{server.url}/model/fold_0/ckpt.pth" in str(err.value) and str(dest) in str(err.value)
    assert "LINGUINE_OFFLINE" in str(err.value) and not server.requests
    url = server.url
    server.close()  # nothing listens there any more
    with pytest.raises(LinGuinEError, match="no connection") as err:
        ModelManager(home=tmp_path / "cache", catalogue=catalogue(url), acknowledge=lambda s: True).ensure("single")
    assert f"{url}/w.bin" in str(err.value) and str(tmp_path / "cache" / "models" / "single" / "w.bin") in str(err.value)


def test_http_error_is_reported(tmp_path, server):
    server.files.pop("/w.bin")
    with pytest.raises(LinGuinEError, match="HTTP 404"):
        manager(tmp_path, server).ensure("single")


def test_license_is_shown_before_the_first_download(tmp_path, server, capsys):
    shown = []
    m = manager(tmp_path, server, acknowledge=lambda spec: shown.append(len(server.requests)) or True)
    folder = m.ensure("folder")
    assert shown == [0]  # before any request
    assert (folder / "plans.json").read_bytes() == SMALL and (folder / "fold_0" / "ckpt.pth").is_file()
    m.ensure("folder")
    assert shown == [0]  # not again once downloaded
    with pytest.raises(LinGuinEError, match="not accepted"):
        ModelManager(home=tmp_path / "other", catalogue=m.catalogue, acknowledge=lambda spec: False).ensure("folder")
    assert len(server.requests) == 2
    ModelManager(home=tmp_path / "third", catalogue=m.catalogue).ensure("folder")  # default: print the notice
    err = capsys.readouterr().err
    assert "CC BY-NC-SA 4.0" in err and "Non-commercial use only." in err


def test_cache_folder_is_linguine_home_or_the_user_cache(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("LINGUINE_HOME", str(tmp_path / "mine"))
    assert models.linguine_home() == tmp_path / "mine"
    assert ModelManager().model_dir("nninteractive") == tmp_path / "mine" / "models" / "nninteractive"
    monkeypatch.delenv("LINGUINE_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = models.linguine_home()
    assert home.is_absolute() and home.name == "linguine" and (tmp_path / "home") in home.parents
    assert Path.cwd() not in home.parents and Path(models.__file__).parent not in home.parents


def test_local_weights_files_and_folders(tmp_path, server, monkeypatch):
    m = manager(tmp_path, server)
    weights = tmp_path / "my.bin"
    weights.write_bytes(b"w")
    assert m.ensure("single", weights) == weights  # a file: a single-file model's weights
    root = tmp_path / "root"
    for rel in ("folder/model/plans.json", "folder/model/fold_0/ckpt.pth", "single/w.bin"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    assert m.ensure("folder", weights) == root.parent / "cache" / "models" / "folder" / "model"  # file: not for folders
    monkeypatch.setenv("LINGUINE_WEIGHTS", os.pathsep.join([str(tmp_path / "empty"), str(root)]))
    (tmp_path / "empty").mkdir()
    assert m.ensure("single") == root / "single" / "w.bin"
    assert m.ensure("folder") == root / "folder" / "model"
    assert m.locate_local("folder", root / "folder" / "model") == root / "folder" / "model"  # the model folder itself
    monkeypatch.delenv("LINGUINE_WEIGHTS")
    with pytest.raises(InputError, match="weights path not found"):
        m.ensure("single", tmp_path / "missing.trch")
    before = len(server.requests)
    m.load("single", lambda p: p.read_bytes(), weights)
    assert not (weights.parent / models.SHA_RECORD).exists() and len(server.requests) == before


def test_catalogue_lists_every_backend_model():
    cat = models.load_catalogue()
    assert models.find_catalogue().parent.name == "Resources"
    assert set(cat) >= {"unigradicon", "multigradicon", "lunggradicon", "nninteractive"}
    for spec in cat.values():
        assert spec.license and spec.files and all(f.urls[0].startswith("https://") for f in spec.files)
    nn = cat["nninteractive"]
    assert nn.license == "CC BY-NC-SA 4.0" and nn.show_license and nn.path == "nnInteractive_v1.0"
    assert {Path(f.path).name for f in nn.files} >= {"plans.json", "dataset.json", "checkpoint_final.pth"}
    assert cat["unigradicon"].is_single_file and cat["unigradicon"].approx_bytes > 200e6
