"""Wait until a server answers ``GET /readyz`` with 200: ``python -m service.client.wait URL [SECONDS]``.

Used by ``make serve`` to start the demo stream only once the bundled models are loaded.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request


def wait_ready(url: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
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
