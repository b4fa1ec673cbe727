"""``asasnn serve``: run the inference server (the bundled default model, no set-up needed).

Every flag has an environment variable (``ASASNN_<NAME>``) and a settings-file key of the same name;
flags win over the environment, which wins over the file (docs/service.md).
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from service.config import load_settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="settings file (.toml, .json, .yaml); also ASASNN_CONFIG")
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--model-dir", help="a bundle, or a directory of bundles (default: models/bundled)")
    p.add_argument("--model", dest="default_model", help="name of the default model in --model-dir")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="where the models run (default auto)")
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx", "event"],
        help="step runner backend (default auto: ONNX Runtime when the bundle has its graph)",
    )
    p.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        metavar="KEY",
        help="accept this API key (repeatable); without any, no key is asked for",
    )
    p.add_argument("--max-sessions", type=int, help="concurrent WebSocket sessions (default 64)")
    p.add_argument("--max-batch", type=int, help="most streams per model call (default 64)")
    p.add_argument(
        "--torch-rewrite",
        action="store_true",
        default=None,
        help="torch backend: run the export's inference rewrites (pools folded, fused causal ASA)",
    )
    p.add_argument("--step-threads", type=int, help="threads of one model call (default: all cores but one)")
    p.add_argument("--max-packet-bytes", type=int, help="largest binary event packet (default 4 MiB)")
    p.add_argument("--max-events-per-second", type=float, help="per-session event rate limit (default 5e6)")
    p.add_argument(
        "--idle-timeout", dest="idle_timeout_s", type=float, help="seconds without a message (default 60)"
    )
    p.add_argument(
        "--max-queue-steps", type=int, help="timesteps waiting per session before backpressure (default 64)"
    )
    p.add_argument(
        "--backpressure", choices=["block", "drop"], help="full queue: stop reading (block) or refuse packets"
    )
    p.add_argument(
        "--max-upload-bytes", type=int, help="largest recording for POST /v1/classify (default 64 MiB)"
    )
    p.add_argument(
        "--drain-timeout",
        dest="drain_timeout_s",
        type=float,
        help="on SIGTERM, seconds open streams may go on before they are closed with 1012 (default 30)",
    )
    p.add_argument(
        "--environment", choices=["development", "production"], help="production requires API keys"
    )
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port, each with its own event loop and model runners (default 1); "
        "see docs/service.md",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text: timestamped lines; json: one object per line, for log shippers (default text)",
    )


_FIELDS = (
    "host",
    "port",
    "model_dir",
    "default_model",
    "device",
    "backend",
    "torch_rewrite",
    "api_keys",
    "max_sessions",
    "max_batch",
    "step_threads",
    "max_packet_bytes",
    "max_events_per_second",
    "idle_timeout_s",
    "max_queue_steps",
    "backpressure",
    "max_upload_bytes",
    "drain_timeout_s",
    "environment",
    "log_level",
    "log_format",
    "workers",
)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, **{f: getattr(args, f, None) for f in _FIELDS})
    except (ValidationError, ValueError) as e:
        print(f"asasnn serve: bad settings: {e}", file=sys.stderr)
        return 2
    from service.registry import ModelRegistry, NoModels

    try:  # fail here, with the how-to-fix message, rather than inside uvicorn's start-up
        ModelRegistry.scan(settings.model_dir, settings.default_model, settings.backend, settings.device)
    except NoModels as e:
        print(f"asasnn serve: {e}", file=sys.stderr)
        return 2

    if settings.workers > 1:
        from service.workers import serve_workers

        return serve_workers(settings)
    from service.server import serve

    return serve(settings)
