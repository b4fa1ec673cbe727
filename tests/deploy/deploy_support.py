"""Helpers of the deployment tests (imported by conftest.py and the tests of this folder).

* tools: Debian packages installed on demand (apt-get, root only), console scripts of the venv;
* processes: free loopback ports, HTTP polling, start/stop with logs;
* streaming: synthetic DVS events into ``WS /ws/infer`` over a plain WebSocket (protocol v1);
* PromQL: metric names used by an expression, found by a small tokenizer (no hand-kept list).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent  # the venv's bin: asasnn, hadolint, kubernetes-validate


# ---- tools ------------------------------------------------------------------------------------------
def _apt_install(package: str) -> str:
    """Install a Debian package (root only); returns a log for the skip/fail message."""
    if shutil.which("apt-get") is None:
        return "apt-get not available"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "not root, cannot apt-get install"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-o", "Acquire::Retries=3"]
    install = [*apt, "install", "-y", "-q", "--no-install-recommends", package]
    log = []
    for attempt, update_first in enumerate((False, True, True)):
        try:
            if update_first:
                r = subprocess.run([*apt, "update", "-q"], env=env, capture_output=True, text=True, timeout=600)
                log.append(f"apt-get update rc={r.returncode}: {r.stderr.strip()[-500:]}")
            r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as e:
            log.append(f"timed out: {e}")
            continue
        log.append(f"apt-get install {package} (try {attempt + 1}) rc={r.returncode}: {r.stderr.strip()[-500:]}")
        if r.returncode == 0:
            break
        time.sleep(2 * attempt)
    return "\n".join(log)


@functools.cache
def _find_or_install(binary: str, package: str) -> tuple[str | None, str]:
    found = shutil.which(binary)
    if found:
        return found, ""
    log = _apt_install(package)
    return shutil.which(binary), log


def _unavailable(msg: str) -> None:
    """Skip, except under CI where these tests must run: there a missing tool fails."""
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def require_tool(binary: str, package: str) -> str:
    """Path of ``binary``, installing Debian's ``package`` if needed (skip, or fail under CI, if impossible)."""
    path, log = _find_or_install(binary, package)
    if path is None:
        _unavailable(f"{binary} not found and Debian package {package!r} could not be installed:\n{log}")
    return path  # type: ignore[return-value]


def require_venv_tool(name: str, pip_package: str) -> str:
    """A console script that a PyPI package installs into this venv (or one on PATH)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        _unavailable(f"{name} missing: pip install {pip_package} (part of the dev extra)")
    return found  # type: ignore[return-value]


# ---- processes and HTTP -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def log_tail(log: Path | None, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log is not None and log.exists() else ""


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail with the process log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            status, body = http_get(url, timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:300]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.25)
    rc = None if proc is None else proc.poll()
    pytest.fail(f"{url} not ready after {timeout:.0f} s (last: {last}; exit code {rc})\n{log_tail(log)}")


def stop_process(proc: subprocess.Popen, grace: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def running(cmd: list[str], log: Path, **kw: Any) -> Iterator[subprocess.Popen]:
    """A background process whose output goes to ``log``; terminated on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    try:
        yield proc
    finally:
        stop_process(proc)


class Prometheus:
    """Client of a Prometheus HTTP API (instant queries, targets, rules)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        q = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}" + (f"?{q}" if q else ""), timeout=10)
        doc = json.loads(body)
        assert status == 200 and doc.get("status") == "success", f"{path} {params}: HTTP {status} {doc}"
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def value(self, expr: str) -> float | None:
        """The single value of a scalar-like query (None when the result is empty)."""
        res = self.query(expr)
        assert len(res) <= 1, f"{expr}: more than one series {res}"
        return float(res[0]["value"][1]) if res else None

    def wait_for(self, expr: str, pred, timeout: float) -> float | None:
        """Poll ``expr`` until ``pred(value)``; return the last value."""
        deadline = time.monotonic() + timeout
        v = None
        while time.monotonic() < deadline:
            v = self.value(expr)
            if v is not None and pred(v):
                return v
            time.sleep(0.5)
        return v


# ---- streaming ---------------------------------------------------------------------------------------
def _recv_json(ws: Any, timeout: float) -> dict[str, Any] | None:
    try:
        msg = ws.recv(timeout=timeout)
    except TimeoutError:
        return None
    return json.loads(msg) if isinstance(msg, str) else None


def stream_one(url: str, seconds: float, seed: int, out: list[dict[str, Any]]) -> None:
    """One session: ``start``, synthetic packets paced in real time for ``seconds``, ``stop``; the
    ``end`` summary goes to ``out``. Predictions are read as they come (never left to pile up)."""
    from websockets.sync.client import connect

    from models.events.types import SensorSize
    from models.synthetic import SyntheticConfig, live_packets

    with connect(url, max_size=None, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start"}))
        ready = None
        while ready is None:
            msg = _recv_json(ws, 30)
            assert msg is not None, "no 'ready' message within 30 s"
            assert msg.get("type") != "error", msg
            ready = msg if msg.get("type") == "ready" else None
        sensor = ready["binning"]["sensor"]
        cfg = SyntheticConfig(sensor=SensorSize(sensor["width"], sensor["height"]), seed=seed)
        predictions = 0
        t_end = time.monotonic() + seconds
        for events, _label in live_packets(cfg, packet_us=10_000, realtime=True, seed=seed):
            ws.send(events.tobytes())
            while (msg := _recv_json(ws, 0)) is not None:
                assert not (msg.get("type") == "error" and msg.get("fatal")), msg
                predictions += msg.get("type") == "prediction"
            if time.monotonic() >= t_end:
                break
        ws.send(json.dumps({"type": "stop"}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = _recv_json(ws, 5)
            if msg is None:
                continue
            if msg.get("type") == "end":
                out.append({**msg, "predictions_seen": predictions})
                return
            assert not (msg.get("type") == "error" and msg.get("fatal")), msg
            predictions += msg.get("type") == "prediction"
        raise AssertionError("no 'end' message within 60 s of 'stop'")


def stream_synthetic(url: str, seconds: float, streams: int = 2) -> list[dict[str, Any]]:
    """``streams`` concurrent sessions of synthetic events; their ``end`` summaries."""
    out: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            stream_one(url, seconds, seed, out)
        except BaseException as e:  # reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    if errors:
        raise errors[0]
    assert len(out) == streams, f"{len(out)} of {streams} streams finished"
    return out


# ---- PromQL -----------------------------------------------------------------------------------------
# Aggregation operators may be followed by `by (...)` / `without (...)` before their parenthesis, so
# they are recognised by name; every other function is an identifier directly followed by "(".
AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio".split()
)
KEYWORDS = frozenset("and or unless by without on ignoring group_left group_right offset bool inf nan atan2".split())
LABEL_LIST_KEYWORDS = frozenset("by without on ignoring group_left group_right".split())
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]*\]\])
  | (?P<number>0x[0-9a-fA-F]+|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?(?:ms|[smhdwy])?(?:[0-9]+(?:ms|[smhdwy]))*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)


def tokenize(expr: str) -> list[tuple[str, str]]:
    """``(kind, text)`` tokens of a PromQL expression (Grafana's ``$var`` / ``${var}`` kept as one token)."""
    out, i = [], 0
    while i < len(expr):
        m = _TOKEN.match(expr, i)
        if m is None:
            raise ValueError(f"cannot tokenize {expr!r} at {i}: {expr[i:i + 20]!r}")
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
        i = m.end()
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, aggregations or
    keywords, outside label matchers ``{...}``, range/subquery brackets ``[...]`` and the label lists
    of ``by / without / on / ignoring / group_left / group_right``. Also ``{__name__="..."}``."""
    toks = tokenize(expr)
    names: set[str] = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "{":  # label matchers: only __name__="x" names a metric
            j = i + 1
            while j < len(toks) and toks[j][1] != "}":
                if toks[j][1] == "__name__" and j + 2 < len(toks) and toks[j + 1][1] == "=" and toks[j + 2][0] == "string":
                    names.add(toks[j + 2][1][1:-1])
                j += 1
            i = j + 1
            continue
        if text == "[":  # range or subquery
            depth, j = 1, i + 1
            while j < len(toks) and depth:
                depth += {"[": 1, "]": -1}.get(toks[j][1], 0)
                j += 1
            i = j
            continue
        if kind == "ident":
            if text in LABEL_LIST_KEYWORDS and nxt == "(":
                depth, j = 1, i + 2
                while j < len(toks) and depth:
                    depth += {"(": 1, ")": -1}.get(toks[j][1], 0)
                    j += 1
                i = j
                continue
            if not (nxt == "(" or text in AGGREGATIONS or text in KEYWORDS):
                names.add(text)
        i += 1
    return names


HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_family(name: str, histograms: set[str]) -> str:
    """``x_bucket`` / ``x_sum`` / ``x_count`` -> ``x`` when ``x`` is a histogram; else the name itself."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


def grafana_query_metrics(query: str) -> set[str]:
    """Metric names of a Grafana Prometheus variable query (``label_values(selector, label)``,
    ``query_result(expr)``, ``metrics(regex)`` is refused: it names no metric)."""
    q = query.strip()
    m = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", q, re.S)
    if m:
        return metric_names(m.group(1))
    m = re.fullmatch(r"label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", q)
    if m:
        return set()
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    if m:
        return metric_names(m.group(1))
    raise ValueError(f"unsupported Grafana variable query {query!r}")


def parse_exposition(text: str) -> tuple[dict[str, str], set[str]]:
    """``({family: type}, {sample names})`` of a Prometheus text exposition."""
    types: dict[str, str] = {}
    samples: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind.strip()
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, 1)[0])
    return types, samples


def exported_names(types: dict[str, str], samples: set[str]) -> set[str]:
    """Every series name the families can produce (whether or not a child exists yet)."""
    names = set(samples)
    for fam, kind in types.items():
        names.add(fam)
        if kind == "counter":
            names.update({fam + "_total", fam + "_created"} if not fam.endswith("_total") else {fam})
        elif kind in ("histogram", "gaugehistogram"):
            names.update(fam + s for s in ("_bucket", "_sum", "_count", "_created"))
        elif kind == "summary":
            names.update(fam + s for s in ("_sum", "_count", "_created"))
        elif kind == "info":
            names.add(fam + "_info")
    return names


# ---- the small model bundle -------------------------------------------------------------------------
def build_test_bundle(tmp: Path) -> Path:
    """A directory with one small streaming bundle (tiny network, causal attention) for the live tests.

    Uses the service tests' bundle builder when it exists, else the runtime's exporter directly.
    """
    raise NotImplementedError  # replaced below once models.runtime's exporter API is known
