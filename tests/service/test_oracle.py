"""A stream's predictions against an oracle computed apart from the service path, on every backend.

The service bins packets incrementally (FrameBinner), steps a slot of a stateful runner per timestep
(torch or ONNX Runtime), and keeps a running readout. The oracle shares none of that: the frames are a
dense histogram of the events (``np.add.at``, written out below), the network is the bundle's
multi-step forward over the whole sequence, and the readout is the mean of the last ``T`` output rows,
normalised. The bundled ``default`` model's output layer has one neuron per class, so every row is
0 or 1 and the readout's arithmetic is exact: the comparison is equality, field by field and step
by step, through a ``flush`` in the middle of a timestep (the events after it that fall into the
flushed timestep are late and dropped) and a ``reset`` (state, readout and stream time start over).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from models.runtime.bundle import load_bundle
from service.client.api import StreamSession
from tests.service.helpers import live_server

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "bundled" / "default"
PACKET_US = 10_000

pytestmark = pytest.mark.skipif(not (BUNDLED / "card.json").exists(), reason="no bundled default model")


def oracle_frames(events: np.ndarray, t0: int, dt: int, ds: int, shape: tuple[int, int], n_bins: int) -> np.ndarray:
    """Event counts per (bin, polarity, y // ds, x // ds), bins ``t0 + k * dt`` for k < n_bins."""
    k = (events["t"].astype(np.int64) - t0) // dt
    keep = k < n_bins
    frames = np.zeros((n_bins, 2, *shape), dtype=np.float32)
    np.add.at(frames, (k[keep], events["p"][keep], events["y"][keep] // ds, events["x"][keep] // ds), 1)
    return frames


def oracle_predictions(bundle, frames: np.ndarray) -> list[tuple]:
    """(step, label_index, probabilities, spikes) per step: multi-step forward, mean of the last T
    output rows, normalised (uniform while all zero), arg-max lowest index first."""
    with torch.no_grad():
        ref = bundle.exact(torch.from_numpy(frames[:, None]))
    out, counts = ref.out.numpy()[:, 0].astype(np.float64), ref.counts.numpy()[:, 0]
    horizon, rows = bundle.card.timesteps, []
    for i in range(len(frames)):
        window = out[max(0, i + 1 - horizon) : i + 1]
        assert set(np.unique(window)) <= {0.0, 1.0}, "the exactness argument needs 0/1 output rows"
        score = window.sum(0) / len(window)
        total = score.sum()
        probs = score / total if total > 0 else np.full(score.size, 1.0 / score.size)
        rows.append((i, int(np.argmax(score)), probs.astype(np.float32).tolist(), int(counts[i].sum())))
    return rows


def packets(events: np.ndarray, t_from: int, t_to: int) -> list[np.ndarray]:
    """The events with ``t_from <= t < t_to`` in packets of PACKET_US of stream time."""
    sel = events[(events["t"] >= t_from) & (events["t"] < t_to)]
    edges = np.arange(t_from, t_to + PACKET_US, PACKET_US)
    cuts = np.searchsorted(sel["t"], edges[1:-1])
    return [p for p in np.split(sel, cuts) if p.size]


def gesture(index: int) -> np.ndarray:
    from models.synthetic import SyntheticConfig, generate, sample_list

    cfg = SyntheticConfig()
    return generate(sample_list(cfg, "test")[index], cfg)


@pytest.mark.parametrize("backend", ["torch", "onnx", "event"])
def test_a_stream_equals_the_oracle_through_flush_and_reset(backend):
    bundle = load_bundle(BUNDLED)
    card = bundle.card
    dt, ds = card.dt_us, card.ds
    shape = (-(-card.sensor.height // ds), -(-card.sensor.width // ds))
    a, b = gesture(3), gesture(5)
    t0a = int(a["t"][0])
    t_flush = t0a + 12 * dt + dt // 3  # a third into timestep 12
    t_end_a = int(a["t"][-1]) + 1
    k_flush = (t_flush - 1 - t0a) // dt
    late_until = t0a + (k_flush + 1) * dt  # after the flush, earlier events are late

    # ---- the oracle ----
    kept_a = a[(a["t"] < t_flush) | (a["t"] >= late_until)]
    bins_a = (int(kept_a["t"][-1]) - t0a) // dt  # the open timestep at reset is dropped with it
    want_a = oracle_predictions(bundle, oracle_frames(kept_a, t0a, dt, ds, shape, bins_a))
    t0b = int(b["t"][0])
    bins_b = (int(b["t"][-1]) - t0b) // dt + 1  # stop flushes the last timestep
    want_b = oracle_predictions(bundle, oracle_frames(b, t0b, dt, ds, shape, bins_b))
    assert len(want_a) > 20 and len(want_b) > 20
    assert len({r[1] for r in want_a + want_b}) > 1, "a constant label would make the comparison weak"

    # ---- the service ----
    async def stream(url: str) -> tuple[list[dict], dict]:
        output = {"probabilities": True, "top_k": 1, "layer_rates": False}
        async with await StreamSession.connect(url, output=output) as s:
            for p in packets(a, t0a, t_flush):
                await s.send_events(p)
            await s.flush()
            for p in packets(a, t_flush, t_end_a):
                await s.send_events(p)
            # every complete timestep of the first gesture has run before the reset
            while not any(m.get("type") == "prediction" and m["step"] == bins_a - 1 for m in s.messages):
                await s.next_message(60)
            await s.reset()
            await s.wait_for("reset", 60)
            for p in packets(b, t0b, int(b["t"][-1]) + 1):
                await s.send_events(p)
            end = await s.stop(timeout=120)
            return [m for m in s.messages if m.get("type") in ("prediction", "reset", "warning")], end

    with live_server(BUNDLED.parent, backend=backend, default_model="default") as srv:
        msgs, end = asyncio.run(stream(srv.ws))
        assert srv.state.registry.get("default").runner is not None
    reset_at = next(i for i, m in enumerate(msgs) if m["type"] == "reset")
    assert msgs[reset_at]["dropped_steps"] == 0
    warnings = [m for m in msgs[:reset_at] if m["type"] == "warning"]
    assert [w["code"] for w in warnings] == ["late_events"] * len(warnings) and warnings, "the late events"
    got = [
        [(m["step"], m["label_index"], m["probabilities"], m["spikes"]) for m in part if m["type"] == "prediction"]
        for part in (msgs[:reset_at], msgs[reset_at:])
    ]
    assert got[0] == want_a
    assert got[1] == want_b
    assert end["steps"] == len(want_b)
