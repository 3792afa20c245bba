#!/usr/bin/env python
"""Benchmark: the engine service's overhead against in-process tracking, and the upload speed of one scan.

Builds the semi-synthetic 4-scan lung2 study, tracks its tumour (mask prompt on the first scan,
sitk + classic on the CPU) once in process and once through a local `linguine serve` (upload of every
scan, job, polling and result download included; the service's start-up is not), checks that both give
the same label maps, and prints the wall-time ratio. Then times the upload of one 512 x 512 x 60 int16
scan over loopback, and the second "upload" of it, which only asks whether the server has it.

    python scripts/bench_service.py [--ct-dir ../shared/data/ct]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np

from LinGuinELib.core.lesion import Lesion
from LinGuinELib.core.study import Scan, Study
from LinGuinELib.core.tracking import LesionPrompt, Tracker
from LinGuinELib.frontend.settings import Settings
from LinGuinELib.io.load import load_study
from LinGuinELib.research.sample_data import candidate_dirs
from LinGuinELib.research.synthetic import make_study
from LinGuinELib.service import protocol
from LinGuinELib.service.client import EngineClient
from LinGuinELib.service.local import LocalService


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct-dir", default=None)
    args = ap.parse_args()
    ct = Path(args.ct_dir) if args.ct_dir else next(
        (d for d in candidate_dirs() if (d / "lung2_image.nrrd").is_file()), None)
    if ct is None:
        raise SystemExit("lung2_image.nrrd not found; give --ct-dir")
    settings = Settings(registration="sitk", segmentation="classic", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = make_study(ct / "lung2_image.nrrd", ct / "lung2_label.nrrd", Path(tmp) / "study", seed=0)
        study = load_study(csv_path)
    source = study.scans[0]
    prompts = [LesionPrompt(Lesion(1, "tumour"), source.scan_id, mask=source.label == 1)]
    print(f"study: {len(study)} scans, shapes {[s.shape for s in study]}")

    start = time.perf_counter()
    local = Tracker(study, settings.make_registration(), settings.make_segmenter(), **settings.tracker_options()).track(prompts)
    local_s = time.perf_counter() - start

    service = LocalService(extra_args=("--device", "cpu"))
    service.start()
    try:
        service.wait_ready(120)
        client = EngineClient(service.url, service.token)
        start = time.perf_counter()
        client.close_session(client.open_study(study))  # the uploads (loopback: uncompressed)
        upload_s = time.perf_counter() - start
        remote = client.track(study, prompts, settings)  # scans already there: hash checks only
        remote_s = time.perf_counter() - start
        same = all(np.array_equal(local.label_map(s.scan_id), remote.label_map(s.scan_id)) for s in study)
        print(f"in-process tracking: {local_s:.2f} s (engine total {local.stats['seconds']['total']:.2f} s); through "
              f"the service: {remote_s:.2f} s = upload of {len(study)} scans {upload_s:.2f} s + job "
              f"{remote_s - upload_s:.2f} s (engine total on the server {remote.stats['seconds']['total']:.2f} s); "
              f"ratio {remote_s / local_s:.3f} ({100 * (remote_s / local_s - 1):+.1f} %); identical label maps: {same}")
        service_s = remote_s - remote.stats["seconds"]["total"]  # upload, queue, polling, transfer, decoding
        print(f"time spent outside the engine's own tracking: {service_s:.2f} s = "
              f"{100 * service_s / local.stats['seconds']['total']:.1f} % of the in-process engine time "
              "(the rest of the ratio is the tracking itself running slower or faster under the machine's load)")

        rng = np.random.default_rng(0)
        array = np.clip(np.resize(source.array, (60, 512, 512)) + rng.normal(0, 5, (60, 512, 512)), -1024, 3071)
        big = Scan("upload", array.astype(np.int16), source.origin, (0.7, 0.7, 2.5), source.direction, dt.datetime(2020, 1, 1))
        for compress in (False, True):  # loopback default (raw), then as over a network (zlib)
            if compress:  # another scan, so that this one is uploaded too
                big = Scan("upload", big.array + 1, big.origin, big.spacing, big.direction, big.date)
            start = time.perf_counter()
            digest, data = protocol.pack_scan(big, compress)
            packed_s = time.perf_counter() - start
            client._request("PUT", f"/v1/scans/{digest}", data, protocol.PACK_CONTENT_TYPE, timeout_s=120)
            upload_s = time.perf_counter() - start
            print(f"upload of one 512x512x60 int16 scan ({big.array.nbytes / 2**20:.0f} MiB raw, "
                  f"{'zlib' if compress else 'uncompressed'} {len(data) / 2**20:.0f} MiB): {upload_s:.2f} s "
                  f"(hash{' + compression' if compress else ' + packing'} {packed_s:.2f} s)")
        pair = Study("bench", [big, Scan("upload2", big.array, big.origin, big.spacing, big.direction,
                                         dt.datetime(2020, 2, 1))])
        start = time.perf_counter()
        client.close_session(client.open_study(pair))
        again_s = time.perf_counter() - start
        print(f"opening a 2-scan study of a scan already there (hash + existence check, no upload): {again_s:.2f} s")
    finally:
        service.stop()


if __name__ == "__main__":
    main()
