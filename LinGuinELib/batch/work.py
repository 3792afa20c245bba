"""``linguine batch`` and parallel ``linguine evaluate``: the jobs run on Ray workers and the driver side
that writes each study's folder (complete or not at all) and the cohort summary.

``DIR/<study key>/`` holds what ``linguine track`` writes; ``DIR/batch_summary.csv`` and
``DIR/batch_summary.json`` give per study: status (``done``, ``failed`` with its message, ``skipped``
when done by an earlier run, ``interrupted`` when Ctrl-C came first), seconds (wall, on the worker),
lesions, registrations and segmentations computed, attempts and where it ran (host, pid, GPU ids).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from LinGuinELib.batch.cohort import build_study_prompts, read_cohort
from LinGuinELib.batch.runner import Job, import_ray, run_jobs, start_ray
from LinGuinELib.core.errors import InputError
from LinGuinELib.io.atomic import atomic_write, remove_stale_staging, staged_folder
from LinGuinELib.io.output import write_rows_csv

SUMMARY_COLUMNS = ("study", "path", "status", "message", "seconds", "lesions", "registrations", "segmentations",
                   "attempts", "where")


# -- on the workers ------------------------------------------------------------------------------
def track_job(registration, segmenter, settings, payload: dict) -> dict:
    """Track one study's cohort rows with the worker's backends; returns the output files as
    {relative path: bytes} with the lesion, registration and segmentation counts."""
    from LinGuinELib.commands.track import track_study
    from LinGuinELib.io.load import load_study

    study = load_study(payload["study"])
    try:
        prompts = build_study_prompts(study, payload["rows"])
        with tempfile.TemporaryDirectory(prefix="linguine-batch-") as tmp:
            out = Path(tmp) / "out"
            result, _ = track_study(study, prompts, out, settings, dicom_seg=payload["dicom_seg"],
                                    registration=registration, segmenter=segmenter, log=lambda m: None)
            files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    finally:
        for scan in study:  # the backends cache per scan id, and ids repeat across studies
            registration.forget(scan.scan_id)
            segmenter.forget(scan.scan_id)
    return {"files": files, "lesions": len(result.lesions), "registrations": result.stats["registration_calls"],
            "segmentations": result.stats["segmentation_calls"]}


def evaluate_job(registration, segmenter, settings, payload: dict) -> dict:
    """Evaluate one labelled study (as ``linguine evaluate`` does for each); returns its pair rows."""
    from LinGuinELib.io.load import load_study
    from LinGuinELib.research.evaluation import evaluate_study

    study = load_study(payload["study"])
    evaluation = evaluate_study(study, registration, segmenter, source=payload["source"], prompt=payload["prompt"],
                                **settings.tracker_options())
    return {"rows": evaluation.rows, "patient_id": study.patient_id, "source_id": evaluation.source_id,
            "seconds": evaluation.result.stats["seconds"]}


# -- in the driver -------------------------------------------------------------------------------
def write_summary(out: Path, records: list[dict], meta: dict) -> None:
    """batch_summary.csv and batch_summary.json (each atomic)."""
    write_rows_csv(records, SUMMARY_COLUMNS, out / "batch_summary.csv")
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "failed", "skipped", "interrupted")}
    with atomic_write(out / "batch_summary.json") as fh:
        json.dump({**meta, "counts": counts, "studies": records}, fh, indent=2)
        fh.write("\n")


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write {relative path: bytes} under ``folder``."""
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


def _previous(folder: Path) -> dict:
    """Counts from a study folder an earlier run finished (its summary.json)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        return {"lesions": len(summary["lesions"]), "registrations": summary["registration_calls"],
                "segmentations": summary["segmentation_calls"]}
    except (OSError, ValueError, KeyError):
        return {}


def run_batch(cohort, out, settings, *, dicom_seg: bool = False, address: str = "local",
              cpus_per_task: float = 1.0, gpus_per_task: float | None = None, retries: int = 0) -> list[dict]:
    """Track every study of ``cohort`` into ``out``; returns the summary records (cohort order).

    Studies whose folder already exists (only complete folders ever appear) are skipped.
    """
    ray = import_ray()
    jobs = read_cohort(cohort)
    out = Path(out)
    # connect first, so that an unreachable cluster is an error before anything is written
    started = any(not (out / job.key).is_dir() for job in jobs) and start_ray(address)
    try:
        return _run_batch(jobs, out, cohort, settings, dicom_seg, address, cpus_per_task, gpus_per_task, retries)
    finally:
        if started:
            ray.shutdown()


def _run_batch(jobs, out: Path, cohort, settings, dicom_seg, address, cpus_per_task, gpus_per_task, retries):
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / ".linguine-batch.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(f"{out}: another linguine batch is writing to this folder") from None
    try:
        remove_stale_staging(out)  # left by a run that was killed outright
        records, todo = {}, []
        for job in jobs:
            records[job.key] = {"study": job.key, "path": job.study, "status": "", "message": ""}
            if (out / job.key).is_dir():
                records[job.key].update(status="skipped", message="done by an earlier run", **_previous(out / job.key))
            else:
                todo.append(Job(job.key, {"study": job.study, "rows": job.rows, "dicom_seg": dicom_seg}))
        meta = {"cohort": str(Path(cohort).resolve()), "out": str(out.resolve()), "settings": settings.to_dict(),
                "dicom_seg": dicom_seg, "retries": retries, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        start = time.perf_counter()

        def on_result(job: Job, outcome: dict) -> None:
            record = records[job.key]
            record.update(seconds=outcome["seconds"], attempts=outcome["attempts"], where=outcome["where"])
            if outcome["ok"]:
                value = outcome["value"]
                with staged_folder(out / job.key) as stage:
                    write_files(stage, value["files"])
                record.update(status="done", lesions=value["lesions"], registrations=value["registrations"],
                              segmentations=value["segmentations"])
            else:
                record.update(status="failed", message=outcome["message"])
            write_summary(out, list(records.values()), meta)

        try:
            meta["ray"] = run_jobs(todo, track_job, settings, on_result, address=address, cpus_per_task=cpus_per_task,
                                   gpus_per_task=gpus_per_task, retries=retries,
                                   skipped=len(jobs) - len(todo))
        except KeyboardInterrupt:
            for record in records.values():
                if not record["status"]:
                    record.update(status="interrupted", message="stopped by Ctrl-C before it finished")
            raise
        finally:
            meta["wall_seconds"] = round(time.perf_counter() - start, 3)
            write_summary(out, list(records.values()), meta)
        return list(records.values())
    finally:
        lock.release()


def print_records(records: list[dict], file=None) -> None:
    file = file or sys.stdout
    print(f"{'study':<24} {'status':<11} {'seconds':>8} {'lesions':>7} {'regs':>5}  where / message", file=file)
    for r in records:
        num = lambda k, f: format(r[k], f) if r.get(k) not in (None, "") else "-"
        print(f"{r['study'][:24]:<24} {r['status']:<11} {num('seconds', '8.1f')} {num('lesions', '7d')} "
              f"{num('registrations', '5d')}  {r['message'] or r.get('where', '')}", file=file)
