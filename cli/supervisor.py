"""Process supervision for the embedded stack (``normsearch up``): start children, restart the
ones marked ``restart`` when they die, report the end of any other as fatal, stop them all.

A restarted child is never given up on: each restart waits longer than the last (exponential
back-off, ``restart_delay_s`` doubled per death, capped at ``max_restart_delay_s``) and a child
that then stays up for ``stable_after_s`` starts again from the shortest delay. So a worker that
keeps dying (a job that exhausts its memory, retried by the reaper until ``MAX_ATTEMPTS`` fails
it) costs restarts spaced ever further apart, never the API: only the end of a child without
``restart`` is fatal. Each restart is logged once, in one line, and recorded (``restart_log``).

``stop()`` sends each child its stop signals (SIGTERM by default), then SIGKILL after a timeout;
each child runs in its own process group and, on Linux, gets SIGTERM if ``up`` itself dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a ``preexec_fn`` that has the child sent SIGTERM when ``up`` dies (even by
    SIGKILL), so no API or worker outlives it; elsewhere None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


_PREEXEC = _parent_death_signal()


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process: a name (for logs), its command line, whether it is restarted
    when it ends (otherwise its end is fatal), and the signals that ask it to stop, tried in
    turn before SIGKILL."""

    name: str
    argv: Sequence[str]
    restart: bool = False
    stop_signals: tuple[int, ...] = (signal.SIGTERM,)


@dataclass(frozen=True)
class Restart:
    """One restart of a child: when its end was seen (``time.monotonic()``), its exit code, how
    long it had run, and the back-off before it was started again."""

    at: float
    exit_code: int | None
    uptime_s: float
    delay_s: float


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen | None = None
    log: IO[bytes] | None = None
    started_at: float | None = None
    restart_at: float | None = None
    restarts: list[Restart] = field(default_factory=list)
    total_restarts: int = 0
    consecutive: int = 0  # deaths since it last stayed up for ``stable_after_s``


# The restart history kept per child (the newest): enough to see the back-off, bounded for a
# child that has died thousands of times over weeks.
RESTART_LOG_SIZE = 100


class Supervisor:
    """Starts child processes, restarts those marked ``restart`` whenever they die (after an
    exponential back-off, never giving up), reports the end of any other as fatal, and stops them
    all. ``poll()`` does one round of checks and never blocks; ``watch()`` polls until asked to
    stop or something fatal happens. Thread-safe."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_dir: Path | None = None,
        stop_timeout_s: float = 15.0,
        restart_delay_s: float = 1.0,
        max_restart_delay_s: float = 60.0,
        stable_after_s: float = 300.0,
    ) -> None:
        self._children = {spec.name: _Child(spec) for spec in specs}
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._log_dir = log_dir
        self._stop_timeout_s = stop_timeout_s
        self._restart_delay_s = restart_delay_s
        self._max_restart_delay_s = max(max_restart_delay_s, restart_delay_s)
        self._stable_after_s = stable_after_s
        self._lock = threading.RLock()
        self._stopping = False
        self.failure: str | None = None

    def start(self) -> None:
        with self._lock:
            for child in self._children.values():
                self._spawn(child)

    def process(self, name: str) -> subprocess.Popen | None:
        return self._children[name].process

    def restarts(self, name: str) -> int:
        """How many times ``name`` was restarted (or is about to be)."""
        return self._children[name].total_restarts

    def restart_log(self, name: str) -> list[Restart]:
        """The newest restarts of ``name`` (at most ``RESTART_LOG_SIZE``), oldest first."""
        with self._lock:
            return list(self._children[name].restarts)

    def backoff_s(self, deaths: int) -> float:
        """The delay before the restart after ``deaths`` deaths in a row (1, 2, ...)."""
        return min(self._restart_delay_s * 2 ** min(deaths - 1, 60), self._max_restart_delay_s)

    def _spawn(self, child: _Child) -> None:
        output = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            if child.log is None:
                child.log = (self._log_dir / f"{child.spec.name}.log").open("ab")
            output = child.log
        child.process = subprocess.Popen(
            list(child.spec.argv),
            env=self._env,
            cwd=self._cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            # Its own session: a terminal's Ctrl-C reaches ``up`` only, which stops the children
            # in order; leftovers (e.g. Ray's processes) can be killed as a group.
            start_new_session=True,
            preexec_fn=_PREEXEC,
        )
        restarted = child.started_at is not None  # its restart was logged when it died
        child.restart_at = None
        child.started_at = time.monotonic()
        log.log(
            logging.DEBUG if restarted else logging.INFO,
            "%s started (pid %s)",
            child.spec.name,
            child.process.pid,
        )

    def _respawn(self, child: _Child, now: float) -> None:
        """Start a dead child again; one that cannot even be started (``OSError``: its program
        is gone, no memory to fork) is retried after the next back-off, like a death."""
        try:
            self._spawn(child)
        except OSError as error:
            child.consecutive += 1
            delay = self.backoff_s(child.consecutive)
            child.restart_at = now + delay
            name = child.spec.name
            log.warning("%s could not be started (%s); trying again in %.1f s", name, error, delay)

    def poll(self) -> str | None:
        """Check every child once: schedule or do restarts; the failure message, if any."""
        with self._lock:
            if self._stopping or self.failure is not None:
                return self.failure
            now = time.monotonic()
            for child in self._children.values():
                process = child.process
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        self._respawn(child, now)
                    continue
                if process is None or process.poll() is None:
                    continue
                _kill_group(process.pid)
                code = process.returncode
                if not child.spec.restart:
                    self.failure = f"{child.spec.name} exited unexpectedly (exit code {code})"
                    return self.failure
                uptime = now - (child.started_at if child.started_at is not None else now)
                if uptime >= self._stable_after_s:
                    child.consecutive = 0  # it had recovered: back to the shortest delay
                child.consecutive += 1
                delay = self.backoff_s(child.consecutive)
                child.restart_at = now + delay
                child.total_restarts += 1
                child.restarts.append(Restart(now, code, uptime, delay))
                del child.restarts[:-RESTART_LOG_SIZE]
                log.warning(
                    "%s exited (exit code %s) after %.1f s; restart %d (%d in a row) in %.1f s",
                    child.spec.name,
                    code,
                    uptime,
                    child.total_restarts,
                    child.consecutive,
                    delay,
                )
            return None

    def watch(self, stop: threading.Event, interval_s: float = 0.5) -> str | None:
        """Poll until ``stop`` is set (None) or a child's end is fatal (its message)."""
        while not stop.wait(interval_s):
            failure = self.poll()
            if failure is not None:
                return failure
        return None

    def stop(self) -> None:
        """Ask every child to stop (its stop signals in turn, ``stop_timeout_s`` each), then kill
        what is left, the children's process groups included."""
        with self._lock:
            self._stopping = True
            children = list(self._children.values())
        running = [c for c in children if c.process is not None and c.process.poll() is None]
        step = 0
        while running:
            for child in running:
                signals = child.spec.stop_signals
                sig = signals[step] if step < len(signals) else signal.SIGKILL
                _signal(child.process, sig)
            deadline = time.monotonic() + self._stop_timeout_s
            for child in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            running = [c for c in running if c.process.poll() is None]
            step += 1
            if running and step > max(len(c.spec.stop_signals) for c in running):
                for child in running:  # SIGKILL did not end it: wait, it cannot refuse
                    child.process.wait()
                break
        for child in children:
            if child.process is not None:
                _kill_group(child.process.pid)
            if child.log is not None:
                child.log.close()
                child.log = None


def _signal(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


def _kill_group(pgid: int) -> None:
    """Kill what is left of a child's process group (the child itself has ended)."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


# -- the stack -------------------------------------------------------------------------------
