"""Exact arithmetic (docs/exact.md): a stream's results do not depend on its batch-mates or its backend.

The property: over at least 200 random batch compositions (streams join and leave, slots are
reused, batches of 1 to 64), every stream's outputs, spike counts, SOPs, energy and final state are
**equal** to those of the same stream stepped alone, on the torch, the ONNX Runtime and the
event-driven runner (with two threads: each batch cut in two parts stepped at once, each part
choosing its scatter or dense synapse from its own density), for
the bundled step models and the paper-size gesture3 network (2x32x32, causal ASA, untrained but
calibrated so that every layer spikes). The reference is a plain step loop of the exact network in
PyTorch at batch 1: no slot table, no rewrite, no ONNX. Equal to one reference means equal to each
other too. No tolerance anywhere: one flipped spike, or one membrane an ulp off, fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.runtime.bundle import load_bundle
from models.runtime.export import random_frames
from models.runtime.loading import load_runner

BUNDLED = Path(__file__).resolve().parents[3] / "models" / "bundled"
CALLS = 200
MAX_BATCH = 64


@pytest.fixture(scope="module")
def models(gesture3_paper):
    got = {name: load_bundle(BUNDLED / name) for name in ("default", "vanilla")}
    got["gesture3"] = gesture3_paper
    return got


def _streams(bundle, n: int, seed: int) -> list[np.ndarray]:
    """``n`` streams of Poisson event frames of 2 to 6 steps (more events in some streams)."""
    rng = np.random.default_rng(seed)
    return [
        random_frames(int(rng.integers(2, 7)), 1, bundle.card.frame_shape, rate=float(rng.uniform(0.2, 3)), seed=seed + i)[:, 0]
        for i in range(n)
    ]


def _alone(bundle, frames: np.ndarray):
    """One stream stepped alone through the exact network in PyTorch: results per step, final state."""
    net = bundle.exact
    state = net.init_state(1)
    rows = []
    with torch.no_grad():
        for f in frames:
            o, state = net.step(torch.from_numpy(f[None]), state)
            rows.append((o.out[0].numpy(), o.counts[0].numpy()))
    return rows, [s[0].numpy() for s in state]


_REFERENCE: dict[tuple[str, int], tuple] = {}


def _reference(name: str, bundle, streams: list[np.ndarray], i: int):
    """:func:`_alone` of stream ``i``, computed once for both backends."""
    if (name, i) not in _REFERENCE:
        _REFERENCE[name, i] = _alone(bundle, streams[i])
    return _REFERENCE[name, i]


def _mixed(runner, streams: list[np.ndarray], rng: np.random.Generator):
    """Step the streams through one runner in random compositions; per stream its rows and final state."""
    pending = list(range(len(streams)))
    live: dict[int, int] = {}  # stream -> slot
    pos = dict.fromkeys(range(len(streams)), 0)
    rows: dict[int, list] = {i: [] for i in range(len(streams))}
    final: dict[int, list[np.ndarray]] = {}
    sizes = []
    while (pending or live) and len(sizes) < CALLS:
        # log-uniform 1..16, and every 20th call the largest batch (64)
        want = MAX_BATCH if len(sizes) % 20 == 10 else int(np.exp(rng.uniform(0, np.log(17))))
        while pending and len(live) < want + rng.integers(0, 8):  # joins
            i = pending.pop(0)
            live[i] = runner.open()
        pick = list(rng.permutation(list(live)))[: max(1, min(want, len(live)))]
        res = runner.step([live[i] for i in pick], np.stack([streams[i][pos[i]] for i in pick]))
        sizes.append(len(pick))
        for r, i in enumerate(pick):
            rows[i].append((res.out[r], res.counts[r], res.sops[r], res.energy_j[r]))
            pos[i] += 1
            if pos[i] == len(streams[i]):  # leaves: its slot goes back for reuse
                slot = live.pop(i)
                final[i] = runner.read_state(slot)
                runner.close(slot)
    return rows, final, sizes


@pytest.mark.parametrize("backend", ("torch", "onnx", "event"))
@pytest.mark.parametrize("name", ("default", "vanilla", "gesture3"))
def test_any_batch_composition_gives_each_stream_its_own_results(models, name, backend):
    b = models[name]
    streams = _streams(b, 800, seed=1)
    threads = {"onnx": {"threads": 1}, "event": {"threads": 2}}.get(backend, {})
    runner = load_runner(b, backend, "cpu", capacity=2, **threads)
    rows, final, sizes = _mixed(runner, streams, np.random.default_rng(2))
    assert len(sizes) >= CALLS and max(sizes) == MAX_BATCH and min(sizes) == 1, sizes
    assert runner.capacity >= MAX_BATCH  # grown from 2, slots reused as streams left
    assert len(final) > 100
    for i in sorted(final):
        ref_rows, ref_state = _reference(name, b, streams, i)
        for t, ((out, counts, sops, energy), (ref_out, ref_counts)) in enumerate(zip(rows[i], ref_rows)):
            np.testing.assert_array_equal(out, ref_out, err_msg=f"stream {i} step {t}")
            np.testing.assert_array_equal(counts, ref_counts, err_msg=f"stream {i} step {t}")
            assert sops == np.float32(runner.sops(ref_counts[None])[0]) and energy > 0
        for got, want, state in zip(final[i], ref_state, b.exact.state_names()):
            np.testing.assert_array_equal(got, want, err_msg=f"stream {i}: {state}")


@pytest.mark.parametrize("backend", ("torch", "onnx"))
def test_window_runner_gives_each_stream_its_own_windows(backend):
    """The paper's ASA (window mode): every evaluated window of a stream, batched with whichever
    streams are due at that call, equals the same window alone through the exact network."""
    from models.runtime.window import window_means

    b = load_bundle(BUNDLED / "asa-window")
    t = b.card.timesteps
    rng = np.random.default_rng(3)
    streams = [random_frames(int(rng.integers(t, t + 10)), 1, b.card.frame_shape, seed=50 + i)[:, 0] for i in range(24)]
    runner = load_runner(b, backend, "cpu", capacity=2, **({"threads": 1} if backend == "onnx" else {}))
    live = {i: runner.open() for i in range(12)}
    pending, pos, checked, due_sizes = list(range(12, 24)), dict.fromkeys(range(24), 0), 0, []
    while live:
        pick = [i for i in rng.permutation(list(live)) if rng.random() < 0.6] or list(live)[:1]
        res = runner.step([live[i] for i in pick], np.stack([streams[i][pos[i]] for i in pick]))
        due_sizes.append(int(res.evaluated.sum()))
        for r, i in enumerate(pick):
            pos[i] += 1
            if res.evaluated[r]:
                window = torch.from_numpy(streams[i][pos[i] - t : pos[i], None])
                with torch.no_grad():
                    out, counts = window_means(b.exact(window))
                np.testing.assert_array_equal(res.out[r], out[0].numpy(), err_msg=f"stream {i} at {pos[i]}")
                np.testing.assert_array_equal(res.counts[r], counts[0].numpy(), err_msg=f"stream {i} at {pos[i]}")
                checked += 1
            if pos[i] == len(streams[i]):
                runner.close(live.pop(i))
                if pending:
                    j = pending.pop(0)
                    live[j] = runner.open()
    assert checked >= 40 and max(due_sizes) >= 3  # windows were evaluated in batches of several streams


def test_tie_tolerance_keeps_steady_channels_at_their_mean():
    """Why causal ASA keeps ``TIE_RTOL`` with exact arithmetic: a steady input's score sits on its own
    running mean, and the mean's float recurrence lands an ulp or two below it in many channel-steps.
    Without the tolerance those channels would change group by rounding; with it none does. The
    counts are exact (the arithmetic is), so they are the figures docs/exact.md quotes."""
    from models.attention import TIE_RTOL

    exact = load_bundle(BUNDLED / "default").exact
    asa = exact.layers[0].attention
    frame = torch.from_numpy(np.random.default_rng(0).poisson(0.6, size=(1, 2, 16, 16)).astype(np.float32))
    with torch.no_grad():
        x = exact.layers[0].synapse(frame)
        num, den = asa.init_state(1, x)
        equal = below = above = rescued = 0
        for _ in range(40):
            m = asa.score(x)
            num, den = asa.cfg.rho * num + m, asa.cfg.rho * den + 1
            mbar = num / den
            equal += int((m == mbar).sum())
            below += int((m < mbar).sum())
            above += int((m > mbar).sum())
            rescued += int(((m < mbar) & (m >= mbar - TIE_RTOL * mbar.abs())).sum())
    assert (equal, below, above) == (139, 116, 65)
    assert rescued == below  # every "below" is rounding: the tolerance puts it back at the mean
