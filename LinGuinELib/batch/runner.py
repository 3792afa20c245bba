"""Run one job per study on Ray: an embedded local instance by default, or an existing cluster.

One Ray actor per slot (``gpus_per_task`` GPUs, else ``cpus_per_task`` CPUs) builds the backends of a
:class:`~LinGuinELib.frontend.settings.Settings` once and keeps them (and any loaded deep-learning
model) for every study it is given. A job is a module-level function ``fn(registration, segmenter,
settings, payload)``; its result, or the message of its failure, comes back to the driver, which
retries failures up to ``retries`` times and never lets one study stop the others.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlparse

from LinGuinELib.core.errors import InputError, LinGuinEError

INSTALL_HINT = "pip install 'linguine[batch]' (or: pip install 'ray>=2.40,<3')"
LOCAL = "local"


def import_ray():
    """The ``ray`` module, or an error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LinGuinEError(f"this command runs on Ray, which is not installed; install it with: {INSTALL_HINT}") from None
    return ray


def add_arguments(parser, default_address: str | None = LOCAL) -> None:
    """The Ray options shared by ``linguine batch`` and ``linguine evaluate``."""
    g = parser.add_argument_group("Ray (parallel runs)")
    g.add_argument("--address", default=default_address,
                   help="local (an embedded Ray instance using this machine's cores and GPUs), auto (the cluster this "
                        "machine belongs to) or ray://HOST:PORT" + (" (default: local)" if default_address else
                                                                    " (default: run in this process, one study at a time)"))
    g.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per worker slot (default 1)")
    g.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs per worker slot (default: 1 when the cluster has GPUs and --device is not cpu, else 0)")


def check_address(address: str) -> None:
    """InputError at once when ``address`` (``local``, ``auto``, ``ray://HOST:PORT`` or ``HOST:PORT``) is
    malformed or its host and port do not accept a TCP connection within 5 s."""
    if address in (LOCAL, "auto"):
        return
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    if parsed.scheme not in ("ray", "gcs") or not parsed.hostname or parsed.port is None:
        raise InputError(f"--address {address!r}: give local, auto, ray://HOST:PORT or HOST:PORT")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=5).close()
    except OSError as exc:
        raise InputError(f"--address {address!r}: cannot reach the Ray cluster at {parsed.hostname}:{parsed.port} "
                         f"({exc.strerror or exc})") from None


def start_ray(address: str = LOCAL) -> bool:
    """Connect to Ray (embedded local instance for ``local``); True when this call started it. An
    instance already initialised in this process (e.g. by a test) is reused."""
    ray = import_ray()
    check_address(address)
    if ray.is_initialized():
        return False
    if address == LOCAL:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
        return True
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        raise InputError(f"--address {address!r}: cannot connect to a Ray cluster: {exc}") from None
    return True


class Worker:
    """Ray actor body: one slot's backends, built on first use and kept across studies."""

    def __init__(self, settings: dict, threads: int):
        import SimpleITK as sitk

        from LinGuinELib.frontend.settings import Settings

        # one slot's share of the cores (Ray sets OMP_NUM_THREADS, which torch follows, but not ITK's)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))
        self.settings = Settings.from_dict(settings)
        self.backends = None

    def where(self) -> str:
        import ray

        gpus = ray.get_gpu_ids()
        return f"{socket.gethostname()} pid {os.getpid()}" + (f" gpu {','.join(map(str, gpus))}" if gpus else "")

    def run(self, fn: Callable, payload) -> dict:
        """{"ok", "value" or "message", "seconds", "where"}; a failure is returned, not raised."""
        start = time.perf_counter()
        try:
            if self.backends is None:
                self.backends = (self.settings.make_registration(), self.settings.make_segmenter())
            value, ok, message = fn(*self.backends, self.settings, payload), True, ""
        except LinGuinEError as exc:
            value, ok, message = None, False, str(exc)
        except Exception as exc:  # a crash in one study must not stop the cohort: record it
            value, ok, message = None, False, f"{type(exc).__name__}: {exc}"
        return {"ok": ok, "value": value, "message": message, "seconds": round(time.perf_counter() - start, 3),
                "where": self.where()}


@dataclass
class Job:
    key: str
    payload: object
    attempts: int = 0


@dataclass
class Counts:
    done: int = 0
    failed: int = 0
    running: int = 0
    skipped: int = 0

    def text(self) -> str:
        return f"done={self.done} failed={self.failed} running={self.running}" + (
            f" skipped={self.skipped}" if self.skipped else "")


def slot_count(ray, n_jobs: int, cpus_per_task: float, gpus_per_task: float) -> int:
    """How many actors fit the cluster (by GPUs when ``gpus_per_task`` > 0, else by CPUs), at most one per job."""
    resources = ray.cluster_resources()
    if gpus_per_task > 0:
        if resources.get("GPU", 0) < gpus_per_task:
            raise InputError(f"--gpus-per-task {gpus_per_task:g}: the Ray cluster has {resources.get('GPU', 0):g} GPU(s)")
        slots = int(resources["GPU"] // gpus_per_task)
    else:
        if resources.get("CPU", 0) < cpus_per_task:
            raise InputError(f"--cpus-per-task {cpus_per_task:g}: the Ray cluster has {resources.get('CPU', 0):g} CPU(s)")
        slots = int(resources["CPU"] // cpus_per_task)
    return max(1, min(slots, n_jobs))


def default_gpus(ray, settings) -> float:
    """1 GPU per task when the cluster has GPUs and ``--device`` allows CUDA, else 0."""
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 and settings.device != "cpu" else 0.0


def run_jobs(jobs: list[Job], fn: Callable, settings, on_result: Callable[[Job, dict], None], *,
             address: str = LOCAL, cpus_per_task: float = 1.0, gpus_per_task: float | None = None,
             retries: int = 0, desc: str = "studies", skipped: int = 0) -> dict:
    """Run ``fn`` on every job's payload across Ray actors; ``on_result(job, outcome)`` is called in this
    process once per job with its final outcome (after up to ``retries`` retries of a failure).

    Returns {"slots", "cpus_per_task", "gpus_per_task", "address"}. Ctrl-C (KeyboardInterrupt) kills the
    actors, shuts down an embedded Ray and propagates; results already handed to ``on_result`` stand.
    """
    from tqdm import tqdm

    if retries < 0:
        raise InputError(f"--retries must be >= 0, not {retries}")
    if cpus_per_task <= 0:
        raise InputError(f"--cpus-per-task must be > 0, not {cpus_per_task:g}")
    ray = import_ray()
    if not jobs:
        return {"slots": 0, "cpus_per_task": cpus_per_task, "gpus_per_task": gpus_per_task, "address": address}
    started = start_ray(address)
    actors = []
    bar = None
    try:
        gpus = default_gpus(ray, settings) if gpus_per_task is None else float(gpus_per_task)
        n_slots = slot_count(ray, len(jobs), cpus_per_task, gpus)
        remote = ray.remote(Worker).options(num_cpus=cpus_per_task, num_gpus=gpus)
        threads = max(1, int(cpus_per_task))
        new_actor = lambda: remote.remote(settings.to_dict(), threads)
        actors = [new_actor() for _ in range(n_slots)]
        idle, pending, running = list(actors), deque(jobs), {}
        counts = Counts(skipped=skipped)
        bar = tqdm(total=len(jobs), desc=desc, unit="study", file=sys.stderr, dynamic_ncols=True)
        while pending or running:
            while idle and pending:
                actor, job = idle.pop(), pending.popleft()
                job.attempts += 1
                running[actor.run.remote(fn, job.payload)] = (actor, job)
            counts.running = len(running)
            bar.set_postfix_str(counts.text(), refresh=True)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                actor, job = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died (killed, out of memory, node lost)
                    outcome = {"ok": False, "value": None, "message": f"worker lost: {exc}".splitlines()[0],
                               "seconds": None, "where": ""}
                    ray.kill(actor)
                    actors.remove(actor)
                    actor = new_actor()
                    actors.append(actor)
                idle.append(actor)
                if not outcome["ok"] and job.attempts <= retries:
                    pending.append(job)
                    continue
                outcome["attempts"] = job.attempts
                on_result(job, outcome)
                if outcome["ok"]:
                    counts.done += 1
                else:
                    counts.failed += 1
                counts.running = len(running)
                bar.set_postfix_str(counts.text(), refresh=False)
                bar.update(1)
        counts.running = 0
        bar.set_postfix_str(counts.text(), refresh=True)
        return {"slots": n_slots, "cpus_per_task": cpus_per_task, "gpus_per_task": gpus, "address": address}
    finally:
        if bar is not None:
            bar.close()
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
