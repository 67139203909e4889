"""Run N copies of a worker function in spawned processes; restart any that dies; on SIGTERM
or SIGINT pass SIGTERM on, wait for them to drain, and report whether they all stopped cleanly.

What uvicorn's own supervisor does, except that each worker binds its own listening socket
(``SO_REUSEPORT``, see ``service.server``): the kernel then spreads new connections over the
workers. With one socket shared by all of them, whichever worker woke first took every
connection of a burst, and a few keep-alive clients (a proxy's pool, a benchmark) kept one
worker busy while the others idled.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

__all__ = ["supervise"]

log = logging.getLogger(__name__)

_CHECK_S = 0.5  # how often dead workers are looked for
_RESTART_LIMIT = 5  # deaths in a row before giving up (a worker that cannot start)


def supervise(
    target: Callable[..., None], args: tuple[Any, ...], *, count: int, stop_timeout_s: float
) -> int:
    """Blocks until a signal (or until workers keep dying at start); the exit status: 0 when
    every worker stopped cleanly."""
    spawn = multiprocessing.get_context("spawn")  # no fork of a process with threads
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("received %s: stopping %d worker(s)", signal.Signals(sig).name, count)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def start() -> BaseProcess:
        process = spawn.Process(target=target, args=args, daemon=False)
        process.start()
        log.info("started worker %s", process.pid)
        return process

    workers = [start() for _ in range(count)]
    deaths = 0  # in a row: back to 0 once every worker is up again
    try:
        while not stop.wait(_CHECK_S):
            dead = [i for i, process in enumerate(workers) if not process.is_alive()]
            if not dead:
                deaths = 0
                continue
            deaths += len(dead)
            if deaths > _RESTART_LIMIT:
                log.error("workers keep exiting (%d in a row): giving up", deaths)
                break
            for i in dead:
                log.error("worker %s exited with %s: restarting it", workers[i].pid,
                          workers[i].exitcode)  # fmt: skip
                workers[i] = start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        clean = _stop(workers, stop_timeout_s)
    return 0 if clean and deaths <= _RESTART_LIMIT else 1


def _stop(workers: list[BaseProcess], timeout_s: float) -> bool:
    """SIGTERM to every worker (each drains), then wait; kill what outlives the timeout."""
    for process in workers:
        if process.is_alive() and process.pid is not None:
            process.terminate()
    clean = True
    for process in workers:
        process.join(timeout_s)
        if process.is_alive():
            log.error("worker %s did not stop in %g s: killing it", process.pid, timeout_s)
            process.kill()
            process.join()
            clean = False
        clean = clean and process.exitcode == 0
    return clean
