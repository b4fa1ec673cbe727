"""Small helpers for talking to a local server: a free port, a GET that returns the status instead of
raising, and waiting for readiness (``python -m service.client.wait URL [SECONDS]``, which
``make serve`` runs before starting the demo stream). The tests and benchmarks use them too.
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.error
import urllib.request


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """``(status, body)`` of a GET; HTTP errors are answers too, connection errors raise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(url: str, timeout_s: float = 60.0) -> bool:
    """True once ``url`` answers 200 within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if http_get(url, timeout=1)[0] == 200:
                return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    return False


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/readyz"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    if not wait_ready(url, seconds):
        print(f"no ready server at {url} after {seconds:g} s", file=sys.stderr)
        raise SystemExit(1)
