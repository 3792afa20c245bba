"""The engine service end to end: real `linguine serve` processes on 127.0.0.1, the stdlib client, the CLI's
--server, and the Slicer module's EngineConnection; sitk + classic backends on a small 4-scan study."""

import datetime as dt
import http.client
import json
import os
import signal
import threading
import time
import urllib.parse

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import write_study
from LinGuinELib.cli import main
from LinGuinELib.core import coords
from LinGuinELib.core.lesion import Lesion
from LinGuinELib.core.study import Study
from LinGuinELib.core.tracking import LesionPrompt, Tracker
from LinGuinELib.frontend import slicer_bridge as bridge
from LinGuinELib.frontend.engine import EngineConnection
from LinGuinELib.frontend.selftest_data import moving_lesion_study
from LinGuinELib.frontend.settings import Settings
from LinGuinELib.service import protocol
from LinGuinELib.service.client import (AuthenticationError, EngineClient, ServiceError, ServiceUnavailable,
                                        VersionMismatch)
from LinGuinELib.service.local import LocalService

SETTINGS = Settings(registration="sitk", segmentation="classic", device="cpu")
FAST = Settings(registration="identity", segmentation="classic", device="cpu")


def four_scan_study() -> tuple[Study, np.ndarray]:
    """The self-test's 3 timepoints plus a 4th (other noise), with truth labels; and lesion A's LPS centre."""
    tps = moving_lesion_study(0) + moving_lesion_study(1)[2:]
    scans = []
    for n, t in enumerate(tps):
        scan = bridge.scan_from_volume(f"t{n}", t["array"], t["ijk_to_ras"], dt.datetime(2020, 1 + 2 * n, 15))
        scan.label = t["truth"].astype(np.int32)
        scans.append(scan)
    return Study("p1", scans), coords.ras_to_lps(tps[0]["centre_ras"])


@pytest.fixture(scope="module")
def study():
    return four_scan_study()


@pytest.fixture(scope="module")
def service():
    svc = LocalService(extra_args=("--max-upload-mb", "4", "--device", "cpu"))
    svc.start()
    svc.wait_ready(120)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def local_result(study):
    s, centre = study
    prompts = [LesionPrompt(Lesion(1, "A"), "t0", point_lps=centre)]
    return Tracker(s, SETTINGS.make_registration(), SETTINGS.make_segmenter(), **SETTINGS.tracker_options()).track(prompts)


def raw(url, method, path, body=None, token=None, headers=None):
    """(status, parsed JSON or bytes) of one request sent by hand."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    try:
        try:
            conn.request(method, path, body=body, headers=h)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    try:
        return r.status, json.loads(data) if data else None
    except ValueError:
        return r.status, data


def assert_clean_error(status, body, expected_status, *words):
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and list(body) == ["error"], body
    text = body["error"]
    assert "Traceback" not in text and 'File "' not in text, text
    for w in words:
        assert w.lower() in text.lower(), text


def test_tracking_through_the_service_equals_in_process_voxel_for_voxel(service, study, local_result):
    s, centre = study
    client = EngineClient(service.url, service.token)
    info = client.health()
    assert info["protocol"] == protocol.PROTOCOL_VERSION and info["device"] == "cpu" and "sitk" in info["registrations"]
    remote = client.track(s, [LesionPrompt(Lesion(1, "A"), "t0", point_lps=centre)], SETTINGS)
    assert remote.study is s
    for scan in s:
        assert np.array_equal(remote.label_map(scan.scan_id), local_result.label_map(scan.scan_id)), scan.scan_id
        a, b = remote.observation(1, scan.scan_id), local_result.observation(1, scan.scan_id)
        assert a.status == b.status and np.allclose(a.point_lps, b.point_lps) and a.propagated_from == b.propagated_from
        assert a.confidence == b.confidence, scan.scan_id  # the Slicer status table marks "low" as uncertain
    assert any(o.confidence for o in remote.observations[1].values())
    assert sum(o.found for o in remote.observations[1].values()) == 4
    assert remote.stats["registration_calls"] == local_result.stats["registration_calls"] == 3


def test_observation_round_trip_keeps_confidence_and_rejects_unknown_values():
    from LinGuinELib.core.tracking import FOUND, Observation

    mask = np.zeros((6, 7, 8), bool)
    mask[2:4, 3:5, 1:6] = True
    obs = Observation(3, "t1", FOUND, np.array([1.5, -2.0, 3.25]), mask, "t0", np.array([1.0, -2.0, 3.0]), "low")
    arrays: list = []
    d = json.loads(json.dumps(protocol.observation_to_json(obs, arrays)))
    back = protocol.observation_from_json(d, arrays, mask.shape)
    assert back.confidence == "low" and np.array_equal(back.mask, mask) and np.allclose(back.point_lps, obs.point_lps)
    with pytest.raises(protocol.ProtocolError, match="confidence 'sure'"):
        protocol.observation_from_json({**d, "confidence": "sure"}, arrays, mask.shape)


def test_second_lesion_adds_no_registration_and_uploads_nothing(service, study):
    s, centre = study
    client = EngineClient(service.url, service.token)
    sid = client.open_study(s)
    before = raw(service.url, "GET", "/v1/health", token=service.token)[1]
    sid2 = client.open_study(s)  # every scan already there: no PUT, no new memory
    after = raw(service.url, "GET", "/v1/health", token=service.token)[1]
    assert after["memory_bytes"] == before["memory_bytes"] and after["scans"] == before["scans"]
    client.close_session(sid2)
    results = []
    for lid, point in ((1, centre), (2, centre + np.array([19.5, 39.0, 0.0]))):  # lesion A, then the spine
        job = client.submit_track(sid, [LesionPrompt(Lesion(lid), "t0", point_lps=point)], SETTINGS)
        while not client.job_status(job).finished:
            time.sleep(0.1)
        results.append(client.job_result(job))
    assert results[0].stats["registration_calls"] == 3
    assert results[1].stats["registration_calls"] == 0 and results[1].stats["registration_calls_total"] == 3
    # A correction on one timepoint gives the in-process correction.
    current = results[0].observation(1, "t1")
    click, negative = current.point_lps + np.array([1.5, 0.0, 0.0]), [current.point_lps + np.array([0.0, 0.0, 30.0])]
    job = client.submit_correct(sid, 1, "t1", [click], negative, SETTINGS, current)
    while not client.job_status(job).finished:
        time.sleep(0.05)
    corrected = client.job_result(job)
    tracker = Tracker(s, SETTINGS.make_registration(), SETTINGS.make_segmenter(), **SETTINGS.tracker_options())
    expected = tracker.resegment(results[0], 1, "t1", np.array([click]), np.array(negative))
    assert corrected.scan_id == "t1" and corrected.status == expected.status == "found"
    assert np.array_equal(corrected.mask, expected.mask) and corrected.propagated_from == "t0"
    client.close_session(sid)


def test_cancel_during_registration_answers_within_2_s_and_leaves_no_job_running(service, study):
    s, centre = study
    client = EngineClient(service.url, service.token)
    sid = client.open_study(s)
    job = client.submit_track(sid, [LesionPrompt(Lesion(1), "t1", point_lps=centre)], SETTINGS)
    queued = [client.submit_track(sid, [LesionPrompt(Lesion(n), "t1", point_lps=centre)], SETTINGS) for n in (2, 3)]
    assert [client.job_status(j).queue_ahead for j in queued] == [1, 2]  # "busy, 2 jobs ahead"
    assert client.cancel(queued[1]).state == "cancelled" and client.job_status(queued[0]).queue_ahead == 1
    assert client.cancel(queued[0]).state == "cancelled"
    deadline = time.monotonic() + 30
    while (st := client.job_status(job)).stage != "registration":
        assert time.monotonic() < deadline and not st.finished, st
        time.sleep(0.02)
    start = time.monotonic()
    client.cancel(job)
    while not (st := client.job_status(job)).finished:
        time.sleep(0.02)
    assert st.state == "cancelled" and time.monotonic() - start < 2.0
    health = client.health()
    assert health["running"] is False and health["queued"] == 0
    status, body = raw(service.url, "GET", f"/v1/jobs/{job}/result", token=service.token)
    assert_clean_error(status, body, 409, "cancelled")
    client.close_session(sid)


def test_missing_or_wrong_token_gets_401_and_no_data_on_every_endpoint(service, study, monkeypatch):
    s, _ = study
    client = EngineClient(service.url, service.token)
    sid = client.open_study(s)
    digest = protocol.scan_hash(s.scans[0].array, s.scans[0].origin, s.scans[0].spacing, s.scans[0].direction)
    job = client.submit_track(sid, [LesionPrompt(Lesion(1), "t0", point_lps=study[1])], FAST)
    endpoints = [("GET", "/v1/health"), ("GET", f"/v1/scans/{digest}"), ("HEAD", f"/v1/scans/{digest}"),
                 ("PUT", f"/v1/scans/{digest}"), ("POST", "/v1/sessions"), ("GET", f"/v1/sessions/{sid}"),
                 ("DELETE", f"/v1/sessions/{sid}"), ("POST", f"/v1/sessions/{sid}/jobs"), ("GET", f"/v1/jobs/{job}"),
                 ("POST", f"/v1/jobs/{job}/cancel"), ("GET", f"/v1/jobs/{job}/result"), ("GET", "/v1/nothing")]
    for token in (None, "wrong", service.token + "x"):
        for method, path in endpoints:
            status, body = raw(service.url, method, path, body=b"{}" if method in ("PUT", "POST") else None, token=token)
            assert status == 401, (method, path, token)
            if method != "HEAD":
                assert_clean_error(status, body, 401, "token")
    assert client.job_status(job).state != "cancelled"  # nothing above reached the job
    with pytest.raises(AuthenticationError, match=service.url):
        EngineClient(service.url, "wrong").health()
    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", protocol.PROTOCOL_VERSION + 1)
    with pytest.raises(VersionMismatch, match=service.url):
        EngineClient(service.url, service.token).health()
    client.close_session(sid)


def test_bad_uploads_and_requests_get_clear_json_errors(service, study):
    s, _ = study
    url, token = service.url, service.token
    digest = "0" * 64
    big = b"\0" * (5 << 20)  # the service allows 4 MB
    assert_clean_error(*raw(url, "PUT", f"/v1/scans/{digest}", big, token), 413, "4 MB")
    assert_clean_error(*raw(url, "PUT", f"/v1/scans/{digest}", b"garbage", token), 400, "not a LinGuinE array message")
    scan = s.scans[0]
    nan = scan.array.astype(np.float32)
    nan[0, 0, 0] = np.nan
    h = protocol.scan_hash(nan, scan.origin, scan.spacing, scan.direction)
    data = protocol.pack({"kind": "scan", **protocol.geometry(scan.origin, scan.spacing, scan.direction)}, [nan])
    assert_clean_error(*raw(url, "PUT", f"/v1/scans/{h}", data, token), 400, "NaN")
    flat = protocol.pack({"kind": "scan", **protocol.geometry(scan.origin, scan.spacing, scan.direction)}, [scan.array[0]])
    assert_clean_error(*raw(url, "PUT", f"/v1/scans/{h}", flat, token), 400, "3-D")
    real_hash, real = protocol.pack_scan(scan)
    assert_clean_error(*raw(url, "PUT", f"/v1/scans/{h}", real, token), 400, "hash")
    fresh = bridge.scan_from_volume("x", scan.array + 1, np.diag([-1.5, -1.5, 3.0, 1.0]), scan.date)
    fresh_hash, fresh_data = protocol.pack_scan(fresh)
    assert_clean_error(*raw(url, "PUT", f"/v1/scans/{fresh_hash}", fresh_data[:-50], token), 400, "bytes")
    assert raw(url, "HEAD", f"/v1/scans/{fresh_hash}", None, token)[0] == 404  # nothing half-stored
    assert_clean_error(*raw(url, "POST", "/v1/sessions", b"not json", token), 400, "JSON")
    assert_clean_error(*raw(url, "GET", "/v1/sessions/guess", None, token), 404, "open the study again")
    assert_clean_error(*raw(url, "GET", "/v1/jobs/guess", None, token), 404, "unknown job")
    # No request field names a server path: a weights path, or a path as a scan address.
    client = EngineClient(url, token)
    sid = client.open_study(s)
    with pytest.raises(ServiceError, match="cannot name paths"):
        client.submit_track(sid, [LesionPrompt(Lesion(1), "t0", point_lps=study[1])],
                            Settings(registration="identity", segmentation="classic", weights="/etc/passwd"))
    for path in ("/v1/scans/..%2F..%2Fetc%2Fpasswd", "/v1/scans/" + "a" * 63 + "/"):
        status, body = raw(url, "GET", path, None, token)
        assert status in (400, 404) and isinstance(body, dict) and list(body) == ["error"], (path, status, body)
    header = {"kind": "track", "settings": {"registration": "identity"},
              "prompts": [{"lesion": {"lesion_id": 1}, "scan_id": "t0", "point_lps": ["x", 0, 0]}]}
    assert_clean_error(*raw(url, "POST", f"/v1/sessions/{sid}/jobs", protocol.pack(header), token), 400, "point_lps")
    header["prompts"][0]["point_lps"] = [0, 0, 0]
    header["settings"] = {"registration": "nope"}
    assert_clean_error(*raw(url, "POST", f"/v1/sessions/{sid}/jobs", protocol.pack(header), token), 400, "unknown registration")
    client.close_session(sid)


def test_two_concurrent_clients_each_get_their_own_results(service, study):
    s, centre = study
    spine = centre + np.array([19.5, 39.0, 0.0])  # LPS; the self-test's second structure
    jobs = {"a": (Study("pa", s.scans[:3]), centre), "b": (Study("pb", s.scans[1:]), spine)}
    results, errors = {}, []

    def work(name):
        try:
            st, p = jobs[name]
            results[name] = EngineClient(service.url, service.token).track(
                st, [LesionPrompt(Lesion(1), st.scan_ids[0], point_lps=p)], FAST)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in jobs]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors, errors
    for name, (st, p) in jobs.items():
        expected = Tracker(st, FAST.make_registration(), FAST.make_segmenter()).track(
            [LesionPrompt(Lesion(1), st.scan_ids[0], point_lps=p)])
        assert results[name].study is st and results[name].study.scan_ids == st.scan_ids
        for scan in st:
            assert np.array_equal(results[name].label_map(scan.scan_id), expected.label_map(scan.scan_id))
    assert not np.array_equal(results["a"].label_map("t1"), results["b"].label_map("t1"))


def test_cli_server_writes_the_same_files_as_local(service, study, tmp_path):
    import SimpleITK as sitk

    s, centre = study
    csv_path = write_study(tmp_path / "study", s.scans)
    token_file = tmp_path / "token"
    token_file.write_text(service.token)
    args = ["track", str(csv_path), "--source", "t0", "--point", *map(str, centre), "--registration", "sitk",
            "--segmentation", "classic", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    assert main(args + ["--out", str(tmp_path / "remote"), "--server", service.url, "--token-file", str(token_file)]) == 0
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "remote").iterdir()) and len(names) == 6
    for name in names:
        a, b = tmp_path / "local" / name, tmp_path / "remote" / name
        if name.endswith(".nii.gz"):
            ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
            assert np.array_equal(sitk.GetArrayFromImage(ia), sitk.GetArrayFromImage(ib)) and ia.GetOrigin() == ib.GetOrigin()
        elif name == "lesions.csv":
            assert a.read_text() == b.read_text()
        else:
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            for j in (ja, jb):
                j.pop("seconds")
                for lesion in j["lesions"]:
                    lesion.pop("tracking_uid")  # a fresh TrackingUID per run, local or not
            assert ja == jb


def test_server_killed_mid_job_names_the_server_and_writes_nothing(study, tmp_path, capsys):
    s, centre = study
    svc = LocalService(extra_args=("--device", "cpu"))
    svc.start()
    svc.wait_ready(120)
    csv_path = write_study(tmp_path / "study", s.scans)
    token_file = tmp_path / "token"
    token_file.write_text(svc.token)
    url = svc.url

    def killer():
        client = EngineClient(url, svc.token, timeout_s=2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.health()["running"]:
                    break
            except ServiceError:
                pass
            time.sleep(0.02)
        os.killpg(svc.process.pid, signal.SIGKILL)

    t = threading.Thread(target=killer)
    t.start()
    try:
        rc = main(["track", str(csv_path), "--source", "t0", "--point", *map(str, centre), "--registration", "sitk",
                   "--segmentation", "classic", "--out", str(tmp_path / "out"), "--server", url, "--token-file",
                   str(token_file)])
    finally:
        t.join()
        svc.stop()
    err = capsys.readouterr().err
    assert rc == 2 and url in err and "stopped answering during job" in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ServiceUnavailable, match=url):
        EngineClient(url, "x", timeout_s=2).health()


def test_idle_sessions_expire_and_free_memory(study):
    s, _ = study
    svc = LocalService(extra_args=("--idle-timeout-s", "1", "--device", "cpu"))
    svc.start()
    try:
        svc.wait_ready(120)
        client = EngineClient(svc.url, svc.token)
        sid = client.open_study(s)
        info = client.health()
        assert info["sessions"] == 1 and info["memory_bytes"] >= sum(x.array.nbytes for x in s)
        deadline = time.monotonic() + 10
        while (info := client.health())["memory_bytes"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert info["memory_bytes"] == 0 and info["sessions"] == 0 and info["scans"] == 0
        assert_clean_error(*raw(svc.url, "GET", f"/v1/sessions/{sid}", None, svc.token), 404, "expired")
        log = svc.log_path.read_text()
        assert "GET /v1/sessions/{sid} 404" in log and "PUT /v1/scans/{digest} 201" in log
        digest = protocol.scan_hash(s.scans[0].array, s.scans[0].origin, s.scans[0].spacing, s.scans[0].direction)
        assert sid not in log and digest not in log and "p1" not in log  # no ids of patients, scans or sessions
    finally:
        svc.stop()


def test_memory_cap_evicts_the_least_recently_used_idle_study(study):
    s, _ = study
    other = Study("p2", [bridge.scan_from_volume(x.scan_id, x.array + 1, np.diag([-1.5, -1.5, 3.0, 1.0]), x.date)
                         for x in s.scans])
    one_study = sum(x.array.nbytes for x in s)
    svc = LocalService(extra_args=("--max-memory-gb", str(1.5 * one_study / 2**30), "--device", "cpu"))
    svc.start()
    try:
        svc.wait_ready(120)
        client = EngineClient(svc.url, svc.token)
        first = client.open_study(s)
        second = client.open_study(other)  # does not fit beside the first: the idle first study goes
        info = client.health()
        assert info["sessions"] == 1 and one_study <= info["memory_bytes"] <= 1.5 * one_study
        assert_clean_error(*raw(svc.url, "GET", f"/v1/sessions/{first}", None, svc.token), 404, "open the study again")
        assert raw(svc.url, "GET", f"/v1/sessions/{second}", None, svc.token)[0] == 200
    finally:
        svc.stop()


def test_engine_connection_ticks_jobs_and_restarts_a_hung_local_service(study):
    s, centre = study
    conn = EngineConnection("local", extra_args=("--device", "cpu"))
    try:
        deadline = time.monotonic() + 120
        while conn.poll() != "ready":
            assert conn.state != "failed" and time.monotonic() < deadline, conn.error
            time.sleep(0.05)
        job = conn.submit(s, [LesionPrompt(Lesion(1), "t0", point_lps=centre)], FAST)
        seen = []
        while True:
            t0 = time.monotonic()
            status = conn.tick()[job]
            assert time.monotonic() - t0 < 1.0  # ticks never block the GUI for long
            seen.append(status.state)
            if status.finished:
                break
            time.sleep(0.05)
        assert status.state == "done" and conn.tick() == {}
        assert conn.result(job).observation(1, "t3").found
        # A hung local service (stopped with SIGSTOP) does not answer the cancel: restarted after 2 s.
        job = conn.submit(s, [LesionPrompt(Lesion(2), "t0", point_lps=centre)], SETTINGS)
        old_pid = conn.service.process.pid
        os.killpg(old_pid, signal.SIGSTOP)
        start = time.monotonic()
        conn.cancel(job)
        while not (status := conn.tick().get(job)) or not status.finished:
            assert time.monotonic() - start < 10
            time.sleep(0.05)
        assert status.state == "cancelled" and "restarted" in status.message and conn.restarts == 1
        assert 2.0 <= time.monotonic() - start < 8.0
        while conn.poll() != "ready":
            assert conn.state != "failed" and time.monotonic() - start < 120, conn.error
            time.sleep(0.05)
        assert conn.service.process.pid != old_pid and conn.client.health()["sessions"] == 0
    finally:
        conn.shutdown()
    assert conn.service.process is None or conn.service.process.poll() is not None


def test_token_file_is_private_and_non_loopback_needs_a_token(tmp_path, monkeypatch):
    from LinGuinELib.core.errors import InputError
    from LinGuinELib.service.server import load_or_make_token

    monkeypatch.delenv("LINGUINE_TOKEN", raising=False)
    token, where = load_or_make_token(str(tmp_path / "t" / "token"), "127.0.0.1")
    path = tmp_path / "t" / "token"
    assert where == str(path) and path.read_text().strip() == token and len(token) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_make_token(str(path), "0.0.0.0")[0] == token  # a team server keeps its token file
    assert load_or_make_token(None, "127.0.0.1")[0] != load_or_make_token(None, "127.0.0.1")[0]
    with pytest.raises(InputError, match="without a token"):
        load_or_make_token(None, "0.0.0.0")


def test_serve_without_fastapi_says_which_extra_to_install(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["serve"]) == 2
    assert "linguine[serve]" in capsys.readouterr().err


def test_tls_service_answers_a_client_that_trusts_its_certificate_only(study, tmp_path, monkeypatch):
    """`serve --tls-cert/--tls-key` speaks https; a client trusting the team's certificate (SSL_CERT_FILE, as
    the README says) tracks through it; one that does not gets a clear TLS error and no data."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a self-signed test certificate")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    svc = LocalService(extra_args=("--tls-cert", str(cert), "--tls-key", str(key), "--device", "cpu"))
    svc.start()
    try:
        svc.wait_ready(120)
        assert svc.url.startswith("https://127.0.0.1:")
        s, centre = study
        remote = EngineClient(svc.url, svc.token).track(s, [LesionPrompt(Lesion(1, "A"), "t0", point_lps=centre)], FAST)
        assert sum(o.found for o in remote.observations[1].values()) == 4
        other_ca = tmp_path / "other.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
                        "-keyout", str(tmp_path / "other.key"), "-out", str(other_ca)], check=True, capture_output=True)
        monkeypatch.setenv("SSL_CERT_FILE", str(other_ca))
        with pytest.raises(ServiceUnavailable, match="TLS with the engine service at https://127.0.0.1:.*certificate"):
            EngineClient(svc.url, svc.token).health()
        with pytest.raises(ServiceUnavailable, match="not reachable"):  # plain http to the TLS port: no data
            EngineClient(svc.url.replace("https", "http"), svc.token).health()
    finally:
        svc.stop()
