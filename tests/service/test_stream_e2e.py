"""End to end: a real uvicorn server, real WebSocket clients, synthetic gestures.

* a gesture streamed in arbitrary packet sizes gives one prediction per timestep, in order, equal to
  offline classification (REST) of the same events, whatever the packet sizes or the pace;
* 16 concurrent sessions do not mix state;
* the metrics move as expected.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np

from models.events import BinnerConfig, encode_events
from service.client.api import StreamSession, classify, stream_async
from service.client.sources import split_packets, split_random
from tests.service.helpers import DT_US, SENSOR


def expected_steps(events: np.ndarray, max_gap: int = 32) -> int:
    return encode_events(events, BinnerConfig(SENSOR, DT_US, 4, "count", max_gap)).shape[0]


def probs(predictions):
    return np.array([[x["p"] for x in sorted(p["top_k"], key=lambda x: x["label"])] for p in predictions])


def test_stream_in_random_packets_equals_offline_classification(server, gesture):
    rng = np.random.default_rng(1)
    packets = list(split_random(gesture, rng, max_events=3000))
    s = asyncio.run(stream_async(server.ws, packets, output={"probabilities": True, "top_k": 10}))
    n = expected_steps(gesture)
    assert n == 30
    preds = s.predictions
    assert [p["step"] for p in preds] == list(range(n))
    t0 = int(gesture["t"][0])
    assert [p["t_start_us"] for p in preds] == [t0 + k * DT_US for k in range(n)]
    assert not s.errors and not s.warnings
    assert s.close_code == 1000

    offline = classify(server.http, gesture, include_steps=True, top_k=10)
    steps = offline["step_predictions"]
    assert len(steps) == n
    # identical, not close: same binner, same runner, same readout
    assert [p["probabilities"] for p in preds] == [q["probabilities"] for q in steps]
    assert [p["label"] for p in preds] == [q["label"] for q in steps]
    end = s.end
    for key in (
        "label",
        "probabilities",
        "steps",
        "events",
        "duration_us",
        "spikes",
        "sops",
        "energy_j",
        "nasfr",
        "layer_rates",
    ):
        assert end[key] == offline[key], key
    assert end["events"] == gesture.size and end["steps"] == n
    # the per-step numbers add up to the totals
    assert sum(p["spikes"] for p in preds) == end["spikes"]
    assert np.isclose(sum(p["sops"] for p in preds), end["sops"])
    assert 0 < end["nasfr"] < 1 and all(0 <= r <= 1 for r in end["layer_rates"].values())


def test_packet_size_and_pace_do_not_change_predictions(server, gesture):
    part = gesture[gesture["t"] < gesture["t"][0] + 600_000]  # 0.6 s: 12 steps

    async def go():
        one = await stream_async(server.ws, [part], output={"probabilities": True})
        tiny = await stream_async(
            server.ws, split_random(part, np.random.default_rng(2), 60), output={"probabilities": True}
        )
        paced = await stream_async(
            server.ws, split_packets(part, 20_000), pace=4.0, output={"probabilities": True}
        )
        return one, tiny, paced

    one, tiny, paced = asyncio.run(go())
    ref = [p["probabilities"] for p in one.predictions]
    assert len(ref) == expected_steps(part) == 12
    assert [p["probabilities"] for p in tiny.predictions] == ref
    assert [p["probabilities"] for p in paced.predictions] == ref


def test_16_concurrent_sessions_do_not_mix_state(server):
    from models.synthetic import SyntheticConfig, generate, sample_list

    cfg = SyntheticConfig(duration_us=600_000)
    specs = sample_list(cfg, "test")[::7][:16]
    recordings = [generate(spec, cfg) for spec in specs]
    alone = [classify(server.http, ev, include_steps=True)["step_predictions"] for ev in recordings]

    async def one(i: int, ev: np.ndarray):
        rng = np.random.default_rng(100 + i)
        s = await StreamSession.connect(server.ws, output={"probabilities": True})
        for p in split_random(ev, rng, 2000):
            await s.send_events(p)
            await asyncio.sleep(0)
        await s.stop()
        await s.close()
        return s

    async def all_at_once():
        return await asyncio.gather(*(one(i, ev) for i, ev in enumerate(recordings)))

    sessions = asyncio.run(all_at_once())
    assert len({s.session_id for s in sessions}) == 16
    for s, ref in zip(sessions, alone):
        assert [p["step"] for p in s.predictions] == list(range(len(ref)))
        assert [p["probabilities"] for p in s.predictions] == [q["probabilities"] for q in ref]
    assert max(p["batch_size"] for s in sessions for p in s.predictions) > 1  # they really were batched


def test_metrics_move(server, gesture):
    m = server.metric
    before = {
        "events": m("asasnn_events_received_total", model="default"),
        "steps": m("asasnn_steps_total", model="default"),
        "e2e": m("asasnn_e2e_latency_seconds_count", model="default"),
        "joules": m("asasnn_energy_proxy_joules_total", model="default"),
        "sops": m("asasnn_synaptic_ops_total", model="default"),
        "spikes": m("asasnn_spikes_total", model="default", layer="conv1"),
        "sessions": m("asasnn_sessions_started_total", model="default"),
        "preds": sum(
            m("asasnn_predictions_total", model="default", label=c)
            for c in server.state.registry.get(None).runner.card.classes
        ),
    }
    s = asyncio.run(stream_async(server.ws, split_packets(gesture, 10_000)))
    n = len(s.predictions)
    assert m("asasnn_events_received_total", model="default") - before["events"] == gesture.size
    assert m("asasnn_steps_total", model="default") - before["steps"] == n
    assert m("asasnn_e2e_latency_seconds_count", model="default") - before["e2e"] == n
    assert m("asasnn_sessions_started_total", model="default") - before["sessions"] == 1
    preds = sum(
        m("asasnn_predictions_total", model="default", label=c)
        for c in server.state.registry.get(None).runner.card.classes
    )
    assert preds - before["preds"] == n
    assert np.isclose(m("asasnn_synaptic_ops_total", model="default") - before["sops"], s.end["sops"])
    assert np.isclose(
        m("asasnn_energy_proxy_joules_total", model="default") - before["joules"], s.end["energy_j"]
    )
    assert m("asasnn_spikes_total", model="default", layer="conv1") - before["spikes"] > 0
    assert 0 < m("asasnn_layer_spike_rate", model="default", layer="conv1") < 1
    assert 0 < m("asasnn_network_spike_rate", model="default") < 1
    deadline = time.monotonic() + 5
    while m("asasnn_active_sessions", model="default") and time.monotonic() < deadline:
        time.sleep(0.02)  # the server frees the slot just after closing the socket
    assert m("asasnn_active_sessions", model="default") == 0
    assert m("asasnn_queue_depth", model="default") == 0
    assert m("asasnn_batch_size_count", model="default") > 0
    text = httpx.get(server.http + "/metrics").text
    for name in (
        "asasnn_events_received_total",
        "asasnn_steps_total",
        "asasnn_step_latency_seconds_bucket",
        "asasnn_e2e_latency_seconds_bucket",
        "asasnn_layer_spike_rate",
        "asasnn_network_spike_rate",
        "asasnn_energy_proxy_joules_total",
        "asasnn_synaptic_ops_total",
        'asasnn_layer_neurons{layer="fc2",model="default"} 10.0',
    ):
        assert name in text, name


def test_window_model_streams_with_fresh_outputs_every_hop(server, gesture):
    """The paper's ASA needs whole windows: a fresh output every ``hop`` steps once T have passed."""
    s = asyncio.run(
        stream_async(
            server.ws, split_packets(gesture, 10_000), model="asa-window", output={"probabilities": True}
        )
    )
    preds = s.predictions
    assert s.ready["model"]["mode"] == "window" and len(preds) == 30
    assert [p["step"] for p in preds if p["evaluated"]] == [15, 19, 23, 27]  # T = 16, hop = 4
    assert np.allclose([p["probabilities"] for p in preds[:15]], 0.1)  # nothing evaluated yet: uniform
    assert preds[16]["probabilities"] == preds[15]["probabilities"]  # held until the next evaluation
    offline = classify(server.http, gesture, model="asa-window", include_steps=True)
    assert [p["probabilities"] for p in preds] == [q["probabilities"] for q in offline["step_predictions"]]
    assert s.end["label"] == offline["label"] and s.end["energy_j"] == offline["energy_j"]
