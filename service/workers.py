"""``asasnn serve --workers N``: N server processes on one listening socket.

A session is one WebSocket connection, so the workers share nothing a stream needs: each is a whole
server (:func:`service.server.serve`) with its own event loop, engine, model runners and sessions,
and the kernel hands each new connection to one of them. What one process carries is bounded by its
event loop (the per-packet and per-message Python path: sockets, binning, JSON), so workers multiply
it by the cores given to them (docs/performance.md, "Capacity").

The parent binds the socket, starts the workers as fresh interpreters (``spawn``, each in its own
process session so that a terminal's Ctrl-C reaches the parent only) and supervises them:

* SIGTERM or SIGINT is passed on to every worker as SIGTERM: each drains its own streams (snapshot,
  close 1012) and exits; a second signal is passed on as SIGINT, which ends what is left of the drains;
* a worker that dies on its own is replaced (its streams are lost, as when a single server crashes;
  clients resume from their last snapshot); a worker that cannot start stops them all;
* what the workers share: the snapshot key (without a configured ``snapshot_secret`` the parent makes
  one for this run, so a stream resumes on whichever worker takes its reconnection) and the metrics:
  prometheus-client's multiprocess mode, in which every worker writes its samples to files in one
  private directory and ``GET /metrics`` on any worker reports them all (docs/metrics.md).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from pydantic import SecretStr

from service.config import Settings

log = logging.getLogger("asasnn.workers")

START_GRACE_S = 300.0  # a worker that exits with status 3 this soon after its start could not start


def serve_workers(settings: Settings) -> int:
    """Run ``settings.workers`` server processes until stopped; the exit status of ``asasnn serve``."""
    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if settings.snapshot_secret is None:
        settings = settings.model_copy(update={"snapshot_secret": SecretStr(secrets.token_hex(32))})
    sock = _bind(settings.host, settings.port)
    metrics_dir = tempfile.mkdtemp(prefix="asasnn-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the workers, read at their start
    ctx = multiprocessing.get_context("spawn")
    signals = 0

    def on_signal(sig: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        for p in procs.values():
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM if signals == 1 else signal.SIGINT)

    def start(i: int) -> BaseProcess:
        p = ctx.Process(target=_worker, args=(settings, i, sock), name=f"asasnn-worker-{i}")
        p.start()
        started_at[i] = time.monotonic()
        return p

    started_at: dict[int, float] = {}
    procs: dict[int, BaseProcess] = {}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    status = 0
    try:
        for i in range(settings.workers):
            procs[i] = start(i)
        log.info(
            "serving on http://%s:%d with %d workers",
            settings.host,
            sock.getsockname()[1],
            settings.workers,
            extra={"fields": {"pids": [p.pid for p in procs.values()]}},
        )
        while procs:
            for i, p in list(procs.items()):
                p.join(0.2)
                if p.is_alive():
                    continue
                _forget(metrics_dir, p.pid)
                del procs[i]
                if signals:
                    continue
                if p.exitcode == 3 and time.monotonic() - started_at[i] < START_GRACE_S:
                    log.error("worker %d could not start (exit status %s): stopping", i, p.exitcode)
                    status = 3
                    on_signal(signal.SIGTERM, None)
                    continue
                log.warning("worker %d (pid %s) exited with status %s: starting a new one", i, p.pid, p.exitcode)
                procs[i] = start(i)
    finally:
        for p in procs.values():
            p.kill()
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket the workers share (listen() is called by each worker's server)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _forget(metrics_dir: str, pid: int | None) -> None:
    """A dead worker's live gauges (sessions, queue depth) no longer count."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)


def _worker(settings: Settings, index: int, sock: socket.socket) -> None:
    """One worker process: a whole server on the parent's socket."""
    os.setsid()  # signals come from the parent only (see the module docstring)
    from service.server import serve

    raise SystemExit(serve(settings, worker=index, sockets=[sock]))
