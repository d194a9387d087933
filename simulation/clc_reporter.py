"""The package's report channel, client side: a simulated server whose package run was given
`patchaas.reportUrl` and `patchaas.reportToken` POSTs its cycle report there when the cycle ends, as the
PowerShell package does (`Reporter`)."""

from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
import tenacity

from orchestrator.ports import FleetError
from schemas.fleet import CycleReport, CycleState, HeartbeatReport
from simulation.clc_faults import Faults
from simulation.fleet import SimulatedFleet
from workers.fleet import clc_wire, throttle

log = logging.getLogger(__name__)


@dataclass
class ReportLog:
    """What the simulated servers did with their cycle reports (GET /simulator/faults, `reports`)."""

    posted: int = 0  # answered 201: recorded
    replayed: int = 0  # answered 200: the same report was recorded before
    refused: int = 0  # answered 4xx: final, logged with the API's message
    failed: int = 0  # retries ran out (5xx, network): the orchestrator polls the result instead
    dropped: int = 0  # never posted on purpose (Faults.report_drop_rate)
    duplicated: int = 0  # posted a second time on purpose (Faults.report_duplicate_rate)
    heartbeats: int = 0  # running reports answered 202 while a cycle worked
    heartbeats_refused: int = 0  # … answered 4xx: no more heartbeats for that cycle, as the package does
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def as_json(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in
                    ("posted", "replayed", "refused", "failed", "dropped", "duplicated", "heartbeats",
                     "heartbeats_refused")}


@dataclass(frozen=True)
class ReportJob:
    """One package run whose report goes to the channel when its cycle has finished."""

    server: str
    key: str
    url: str
    token: str


class _RetryPost(Exception):
    """A report POST that may succeed if repeated (5xx, connection error, timeout)."""


class Reporter:
    """The end of the update package's cycle on a simulated server: wait until the cycle has finished, then
    POST `CycleReport` JSON (the body `windows-update.ps1` builds) to the report URL with
    `Authorization: Bearer <token>` and `Idempotency-Key: <key>`. 5xx answers and network errors are retried
    with backoff and jitter (tenacity) for up to `post_attempts` attempts / `post_deadline` seconds; a 4xx is
    final and logged with the API's message. A report that is never delivered loses nothing: the orchestrator
    falls back to polling the package run. Daemon worker threads, started on the first job."""

    def __init__(
        self,
        fleet: SimulatedFleet,
        faults: Faults,
        threads: int = 8,
        client: httpx.Client | None = None,
        post_attempts: int = 6,
        post_deadline: float = 30.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 3.0,
        cycle_wait: float = 3600.0,
    ) -> None:
        self.fleet = fleet
        self.faults = faults
        self.log = ReportLog()
        self.post_attempts = post_attempts
        self.post_deadline = post_deadline
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.cycle_wait = cycle_wait
        self._client = client or httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0))
        self._jobs: queue.Queue[ReportJob | None] = queue.Queue()
        self._stop = threading.Event()
        self._size = threads
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._rng = random.Random(faults.seed + 1)
        self._rng_lock = threading.Lock()

    def submit(self, server: str, key: str, url: str, token: str) -> None:
        """Post the report of package run `key` on `server` once its cycle has finished."""
        self._ensure_started()
        self._jobs.put(ReportJob(server, key, url, token))

    def pending(self) -> int:
        """Jobs waiting for a worker thread (tests)."""
        return self._jobs.qsize()

    def close(self) -> None:
        """Stop: waits and retries end at once, queued jobs are not posted (polling covers them)."""
        self._stop.set()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5.0)
        self._client.close()

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._threads or self._stop.is_set():
                return
            for n in range(self._size):
                thread = threading.Thread(target=self._work, name=f"sim-reporter-{n}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._deliver(job)
            except Exception:  # a reporter thread must survive anything one report does
                self.log.count("failed")
                log.exception("report of %s on %s: not delivered", job.key, job.server)

    def _roll(self) -> float:
        with self._rng_lock:
            return self._rng.random()

    def _deliver(self, job: ReportJob) -> None:
        report = self._finished(job)
        if report is None:
            self.log.count("failed")
            return
        if self._roll() < self.faults.report_drop_rate:
            self.log.count("dropped")
            return
        copies = 2 if self._roll() < self.faults.report_duplicate_rate else 1
        body = report.model_dump(mode="json")
        for copy in range(copies):
            if copy:
                self.log.count("duplicated")
            self._post(job, body)

    def _finished(self, job: ReportJob) -> CycleReport | None:
        """The cycle's final report, waiting (tenacity, bounded) while the simulated cycle still runs."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.cycle_wait) | tenacity.stop_any(lambda _s: self._stop.is_set()),
            wait=self._until_finished,
            retry=tenacity.retry_if_exception_type(FleetError)
            | tenacity.retry_if_result(lambda r: r is not None and r.state is CycleState.RUNNING),
            sleep=self._stop.wait,
        )
        beats: dict[str, int] = {}
        try:
            report = retrying(self._cycle_result, job, beats)
        except (tenacity.RetryError, FleetError) as exc:
            log.warning("report of %s on %s: the cycle did not finish (%s)", job.key, job.server, exc)
            return None
        return report if report is not None and report.state is CycleState.FINISHED else None

    def _cycle_result(self, job: ReportJob, beats: dict[str, int]) -> CycleReport | None:
        """The cycle's report now; while it runs, each new heartbeat of the simulated package is posted as the
        package posts it: a running report, `Idempotency-Key: <key>:heartbeat:<n>`, one attempt; a 4xx answer
        ends the cycle's heartbeats."""
        report = self.fleet.cycle_result(job.server, job.key)
        if isinstance(report, HeartbeatReport) and "refused" not in beats and report.beats > beats.get("sent", 0):
            beats["sent"] = report.beats
            body = CycleReport.model_validate(report.model_dump(exclude={"heard_at", "beats"})).model_dump(mode="json")
            headers = {"Authorization": f"Bearer {job.token}",
                       clc_wire.IDEMPOTENCY_HEADER: f"{job.key}:heartbeat:{report.beats}"}
            try:
                answer = self._client.post(job.url, json=body, headers=headers)
            except httpx.TransportError as exc:
                log.info("heartbeat %d of %s on %s not delivered: %s", report.beats, job.key, job.server, exc)
                return report
            if answer.status_code == 202:
                self.log.count("heartbeats")
            elif 400 <= answer.status_code < 500 and answer.status_code not in (408, 429):
                beats["refused"] = answer.status_code
                self.log.count("heartbeats_refused")
                log.warning("heartbeat of %s on %s refused: HTTP %d %s", job.key, job.server, answer.status_code,
                            _answer_message(answer))
        return report

    def _until_finished(self, state: tenacity.RetryCallState) -> float:
        """How long a running cycle has left (the simulated package run takes `package_seconds`), at most
        a second; a short backoff after a transient error of the fleet."""
        outcome = state.outcome
        report = outcome.result() if outcome is not None and not outcome.failed else None
        if isinstance(report, CycleReport):
            left = report.started_at.timestamp() + self.fleet.timings.package_seconds - self.fleet.clock()
            return min(1.0, left) if left > 0.01 else 0.25  # past its usual length: a long cycle, look 4 times a second
        return min(1.0, 0.05 * 2 ** (state.attempt_number - 1))

    def _post(self, job: ReportJob, body: dict[str, Any]) -> None:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.post_attempts)
            | tenacity.stop_after_delay(self.post_deadline)
            | tenacity.stop_any(lambda _s: self._stop.is_set()),
            wait=lambda state: throttle.backoff_seconds(state.attempt_number, self.backoff_initial, self.backoff_max),
            retry=tenacity.retry_if_exception_type(_RetryPost),
            sleep=self._stop.wait,
        )
        try:
            response = retrying(self._attempt, job, body)
        except tenacity.RetryError as exc:
            self.log.count("failed")
            log.warning("report of %s on %s: not delivered (%s)", job.key, job.server, exc.last_attempt.exception())
            return
        if response.status_code == 201:
            self.log.count("posted")
        elif response.status_code < 300:
            self.log.count("replayed")
        else:
            self.log.count("refused")
            log.warning("report of %s on %s refused: HTTP %d %s", job.key, job.server, response.status_code,
                        _answer_message(response))

    def _attempt(self, job: ReportJob, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {job.token}", clc_wire.IDEMPOTENCY_HEADER: job.key}
        try:
            response = self._client.post(job.url, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise _RetryPost(f"{type(exc).__name__}: {exc or 'no answer'}") from exc
        if response.status_code >= 500:
            raise _RetryPost(f"HTTP {response.status_code}: {_answer_message(response)}")
        return response


def _answer_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("message", "")) if isinstance(body, dict) else str(body)[:200]
