"""Prometheus metrics of one app (docs/metrics.md lists every one with PromQL examples).

Each app owns its :class:`~prometheus_client.CollectorRegistry`, so several apps (tests) never share
counters; it also carries prometheus-client's process (CPU, RSS, open fds), platform and garbage
collector metrics. Names follow Prometheus conventions: prefix ``asasnn_``, base units in the name
(``_seconds``, ``_joules``), ``_total`` on counters. Label values are bounded: model names come from
the registry, labels from model cards, reasons from fixed error codes, and every known label value
is created at 0 when a model is registered (or at start for session refusals), so a panel or an
``increase()`` sees the first event as a change from 0, not as a series born at 1.
"""

from __future__ import annotations

import os

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from service.protocol import EVENT_ERRORS, MESSAGE_ERRORS, SESSION_REFUSALS, SNAPSHOT_OUTCOMES

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# 0.999 first: a quantile of batches of 1 lands in (0.999, 1], not interpolated from 0 (histogram_quantile
# takes 0 as the lowest bucket's lower bound), so "p50 = 0.5 streams per call" cannot happen.
BATCH_BUCKETS = (0.999, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATE_EMA = 0.01  # weight of the newest step in the live spike-rate gauges (~100 steps)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """All metric families of the service, registered in a private registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # `asasnn serve --workers N` (service/workers.py): every worker process writes its samples to
        # files in this directory and a scrape of any worker reads them all; each gauge says how its
        # workers' values combine. The process collectors would describe the scraped worker only.
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not self.multiprocess_dir:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                r.register(collector)  # stateless readers of /proc and the interpreter: shareable
        m = ["model"]
        self.model_info = Gauge(
            "asasnn_model_info",
            "Served model (value 1)",
            [*m, "version", "backend", "device"],
            registry=r,
            multiprocess_mode="max",
        )
        self.model_timestep = Gauge(
            "asasnn_model_timestep_seconds",
            "Timestep of a served model (its card's dt_us): one model call per stream per timestep",
            m,
            registry=r,
            multiprocess_mode="max",
        )
        self.layer_neurons = Gauge(
            "asasnn_layer_neurons", "Neurons per spiking layer", [*m, "layer"], registry=r, multiprocess_mode="max"
        )
        # input
        self.events_received = Counter(
            "asasnn_events_received_total",
            "Events accepted from clients (added when a timestep completes and when a session ends)",
            m,
            registry=r,
        )
        self.events_rejected = Counter(
            "asasnn_events_rejected_total",
            "Events in packets refused with an error message",
            [*m, "reason"],
            registry=r,
        )
        self.events_dropped = Counter(
            "asasnn_events_dropped_total",
            "Accepted events that fell into no timestep (late events)",
            [*m, "reason"],
            registry=r,
        )
        self.messages_rejected = Counter(
            "asasnn_messages_rejected_total",
            "Client messages refused with an error message",
            [*m, "reason"],
            registry=r,
        )
        self.packets_received = Counter(
            "asasnn_packets_received_total",
            "Binary event packets accepted (added when a timestep completes and when a session ends)",
            m,
            registry=r,
        )
        # sessions
        self.sessions_started = Counter(
            "asasnn_sessions_started_total", "Streaming sessions started", m, registry=r
        )
        self.sessions_rejected = Counter(
            "asasnn_sessions_rejected_total",
            "WebSocket sessions refused before they started",
            ["reason"],
            registry=r,
        )
        self.active_sessions = Gauge(
            "asasnn_active_sessions",
            "Sessions holding a state slot (streams and recordings)",
            m,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "asasnn_queue_depth",
            "Timesteps waiting for the model, all sessions",
            m,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.backpressure = Counter(
            "asasnn_backpressure_total",
            "Times a session's step queue was full when its events arrived",
            [*m, "action"],
            registry=r,
        )
        self.backpressure_wait = Counter(
            "asasnn_backpressure_wait_seconds_total",
            "Seconds sessions waited for room in their step queue",
            m,
            registry=r,
        )
        # model
        self.steps = Counter(
            "asasnn_steps_total", "Timesteps run (one LIF update of one stream)", m, registry=r
        )
        self.skipped_steps = Counter(
            "asasnn_skipped_steps_total", "Empty timesteps left out by the gap cap", m, registry=r
        )
        self.batch_size = Histogram(
            "asasnn_batch_size", "Streams per model call", m, buckets=BATCH_BUCKETS, registry=r
        )
        self.step_cpu = Counter(
            "asasnn_step_cpu_seconds_total",
            "CPU time of the model calls' own thread (the step latency's sum well above it: the call "
            "waited for a core or the GIL)",
            m,
            registry=r,
        )
        self.step_latency = Histogram(
            "asasnn_step_latency_seconds",
            "Duration of one batched model call",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "asasnn_e2e_latency_seconds",
            "From the packet that completed a timestep to its prediction being sent",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.spikes = Counter("asasnn_spikes_total", "Spikes emitted, per layer", [*m, "layer"], registry=r)
        self.layer_rate = Gauge(
            "asasnn_layer_spike_rate",
            "Live firing rate per layer (spikes/neuron/step, EMA over ~100 steps)",
            [*m, "layer"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.network_rate = Gauge(
            "asasnn_network_spike_rate",
            "Live network average spike firing rate (NASFR, EMA over ~100 steps)",
            m,
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.sops = Counter(
            "asasnn_synaptic_ops_total", "Synaptic operations (spikes x fan-out)", m, registry=r
        )
        self.energy = Counter(
            "asasnn_energy_proxy_joules_total",
            "Energy proxy E_MAC*MACs(first layer) + E_AC*SOPs (45 nm); the sum of the two series below",
            m,
            registry=r,
        )
        self.energy_first_layer = Counter(
            "asasnn_energy_first_layer_joules_total",
            "Energy proxy, the first layer's dense multiply-accumulates (a fixed cost per stream and step)",
            m,
            registry=r,
        )
        self.energy_synaptic = Counter(
            "asasnn_energy_synaptic_joules_total",
            "Energy proxy, the spike-driven part: E_AC * SOPs (grows with the spikes)",
            m,
            registry=r,
        )
        self.snapshots = Counter(
            "asasnn_snapshots_total",
            "Session snapshots: taken, resumed from, or refused (by the refusal's code)",
            [*m, "outcome"],
            registry=r,
        )
        self.snapshot_seconds = Histogram(
            "asasnn_snapshot_seconds",
            "Time to take a snapshot (the session's queued steps, the state read, the encoding)",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "asasnn_predictions_total", "Streamed predictions, by predicted label", [*m, "label"], registry=r
        )
        self.classifications = Counter(
            "asasnn_classifications_total",
            "Recordings classified over REST, by predicted label",
            [*m, "label"],
            registry=r,
        )
        self._ema: dict[str, list[float]] = {}
        self._children: dict[str, _BatchChildren] = {}
        self._first_layer_j: dict[str, float] = {}
        for reason in SESSION_REFUSALS:
            self.sessions_rejected.labels(reason)

    def register_model(
        self,
        name: str,
        version: str,
        backend: str,
        device: str,
        layers: tuple[str, ...],
        neurons: tuple[int, ...],
        timestep_s: float | None = None,
        classes: tuple[str, ...] = (),
        first_layer_j: float = 0.0,
    ) -> None:
        """Every series of a model, at 0. ``first_layer_j``: the energy proxy's fixed part of one
        stream's step (``E_MAC * MACs(first layer)``), which :meth:`observe_batch` separates."""
        self._first_layer_j[name] = first_layer_j
        self.model_info.labels(name, version, backend, device).set(1)
        if timestep_s is not None:
            self.model_timestep.labels(name).set(timestep_s)
        for layer, n in zip(layers, neurons):
            self.layer_neurons.labels(name, layer).set(n)
            self.layer_rate.labels(name, layer).set(0)
            self.spikes.labels(name, layer)
        for family in (
            self.events_received,
            self.steps,
            self.skipped_steps,
            self.sops,
            self.energy,
            self.energy_first_layer,
            self.energy_synaptic,
            self.packets_received,
            self.sessions_started,
            self.backpressure_wait,
            self.batch_size,
            self.step_latency,
            self.step_cpu,
            self.e2e_latency,
        ):
            family.labels(name)
        for reason in EVENT_ERRORS:
            self.events_rejected.labels(name, reason)
        for reason in MESSAGE_ERRORS:
            self.messages_rejected.labels(name, reason)
        self.events_dropped.labels(name, "late")
        for action in ("wait", "drop"):
            self.backpressure.labels(name, action)
        for outcome in SNAPSHOT_OUTCOMES:
            self.snapshots.labels(name, outcome)
        self.snapshot_seconds.labels(name)
        for label in classes:
            self.predictions.labels(name, label)
            self.classifications.labels(name, label)
        self.network_rate.labels(name).set(0)
        self.active_sessions.labels(name).set(0)
        self.queue_depth.labels(name).set(0)

    def observe_batch(
        self,
        model: str,
        layers: tuple[str, ...],
        neurons: tuple[int, ...],
        counts,
        sops: float,
        energy_j: float,
        step_s: float,
        step_cpu_s: float = 0.0,
    ) -> None:
        """Account one model call; ``counts`` is ``[n, L]`` spikes per stream and layer."""
        c = self._children.get(model)
        if c is None:  # label look-ups cost microseconds each: once per model, not per batch
            c = self._children[model] = _BatchChildren(self, model, layers)
        n = int(counts.shape[0])
        c.steps.inc(n)
        c.batch_size.observe(n)
        c.step_latency.observe(step_s)
        c.step_cpu.inc(step_cpu_s)
        c.sops.inc(max(sops, 0.0))
        c.energy.inc(max(energy_j, 0.0))
        first = self._first_layer_j.get(model, 0.0) * n
        c.energy_first_layer.inc(first)
        c.energy_synaptic.inc(max(energy_j - first, 0.0))
        totals = counts.sum(0).tolist()
        ema = self._ema.setdefault(model, [0.0] * (len(layers) + 1))
        w = 1.0 - (1.0 - RATE_EMA) ** n  # n steps at once weigh as n single steps
        for i, (total, neu) in enumerate(zip(totals, neurons)):
            c.spikes[i].inc(total)
            ema[i] += w * (total / (neu * n) - ema[i])
            c.layer_rate[i].set(ema[i])
        ema[-1] += w * (sum(totals) / (sum(neurons) * n) - ema[-1])
        c.network_rate.set(ema[-1])

    def render(self) -> bytes:
        if self.multiprocess_dir:  # every worker's samples, combined
            from prometheus_client import multiprocess

            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined, self.multiprocess_dir)
            return generate_latest(combined)
        return generate_latest(self.registry)


class _BatchChildren:
    """The labelled series :meth:`Metrics.observe_batch` updates for one model."""

    def __init__(self, m: Metrics, model: str, layers: tuple[str, ...]) -> None:
        self.steps = m.steps.labels(model)
        self.batch_size = m.batch_size.labels(model)
        self.step_latency = m.step_latency.labels(model)
        self.step_cpu = m.step_cpu.labels(model)
        self.sops = m.sops.labels(model)
        self.energy = m.energy.labels(model)
        self.energy_first_layer = m.energy_first_layer.labels(model)
        self.energy_synaptic = m.energy_synaptic.labels(model)
        self.network_rate = m.network_rate.labels(model)
        self.spikes = [m.spikes.labels(model, layer) for layer in layers]
        self.layer_rate = [m.layer_rate.labels(model, layer) for layer in layers]
