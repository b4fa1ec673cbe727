"""The event-driven CPU runner (models/runtime/event.py) against the step function it must equal.

The reference is :meth:`SpikingNet.step` of the bundle's exact network in PyTorch (the definition);
the event runner shares none of its code (numba kernels, its own state layout). Equality, no
tolerance: outputs, spike counts and state, on the scatter path, the dense path and the two
alternating from layer to layer, on random frames and on the event frames of a synthetic gesture through the
trained default. The work it reports (accumulations executed) is checked against a count made
with a dense convolution of the spikes by an all-ones kernel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.runtime.bundle import load_bundle
from models.runtime.event import EventNet, EventStepRunner, measure_crossovers
from models.runtime.export import random_frames
from models.runtime.loading import load_runner

BUNDLED = Path(__file__).resolve().parents[3] / "models" / "bundled"
SPARSE, DENSE = 2.0, -1.0  # crossovers that force one path for every layer


@pytest.fixture(scope="module")
def bundles(gesture3_paper):
    got = {name: load_bundle(BUNDLED / name) for name in ("default", "vanilla")}
    got["gesture3"] = gesture3_paper
    return got


def _reference(bundle, frames: np.ndarray):
    """Per step (out, counts) of the exact network's step over ``frames [T, B, 2, H, W]``, and the
    final state."""
    net = bundle.exact
    state = net.init_state(frames.shape[1])
    rows = []
    with torch.no_grad():
        for f in frames:
            o, state = net.step(torch.from_numpy(f), state)
            rows.append((o.out.numpy(), o.counts.numpy()))
    return rows, [s.numpy() for s in state]


def _gesture_frames(bundle, steps: int) -> np.ndarray:
    """A synthetic test gesture binned by the training-side encoder: ``[steps, 1, 2, H, W]``."""
    from models.events.binner import BinnerConfig, encode_events
    from models.events.types import SensorSize
    from models.synthetic import SyntheticConfig, generate, sample_list

    card = bundle.card
    cfg = SyntheticConfig()
    ev = generate(sample_list(cfg, "test")[3], cfg)
    binner = BinnerConfig(SensorSize(card.sensor.width, card.sensor.height), card.dt_us, card.ds)
    return encode_events(ev, binner, num_bins=steps)[:, None]


@pytest.mark.parametrize("path", ("sparse", "dense", "mixed"))
@pytest.mark.parametrize("name", ("default", "vanilla", "gesture3"))
def test_each_path_equals_the_step_function(bundles, name, path):
    b = bundles[name]
    n = len(b.exact.layers)
    cross = {"sparse": [SPARSE] * n, "dense": [DENSE] * n, "mixed": [(DENSE, SPARSE)[i % 2] for i in range(n)]}[path]
    runner = EventStepRunner(b.exact, b.card, capacity=2, crossovers=cross)
    frames = random_frames(10, 5, b.card.frame_shape, rate=1.5, seed=7)
    ref_rows, ref_state = _reference(b, frames)
    slots = [runner.open() for _ in range(5)]
    paths = set()
    for t, (ref_out, ref_counts) in enumerate(ref_rows):
        res = runner.step(slots, frames[t])
        np.testing.assert_array_equal(res.out, ref_out, err_msg=f"step {t}")
        np.testing.assert_array_equal(res.counts, ref_counts, err_msg=f"step {t}")
        paths.update(runner.last_dense)
    assert paths == {"sparse": {False}, "dense": {True}, "mixed": {False, True}}[path]
    assert ref_counts[:, 1:].sum() > 0  # the deep layers spiked: the comparison is not vacuous
    for i, slot in enumerate(slots):
        for got, want, state in zip(runner.read_state(slot), ref_state, b.exact.state_names()):
            np.testing.assert_array_equal(got, want[i], err_msg=f"stream {i}: {state}")


def test_parts_of_a_batch_stepped_at_once_equal_the_step_function(bundles):
    """threads=3: a batch of 7 is cut into parts of 2, 3 and 2, each on its own lane with its own
    work arrays; dense rows in one part and sparse rows in another pick different paths."""
    b = bundles["gesture3"]
    runner = EventStepRunner(b.exact, b.card, capacity=2, threads=3)
    frames = random_frames(6, 7, b.card.frame_shape, rate=0.3, seed=11)
    frames[:, :2] = random_frames(6, 2, b.card.frame_shape, rate=6.0, seed=12)  # the first part dense
    ref_rows, ref_state = _reference(b, frames)
    slots = [runner.open() for _ in range(7)]
    for t, (ref_out, ref_counts) in enumerate(ref_rows):
        res = runner.step(slots, frames[t])
        np.testing.assert_array_equal(res.out, ref_out, err_msg=f"step {t}")
        np.testing.assert_array_equal(res.counts, ref_counts, err_msg=f"step {t}")
    assert sorted(runner.event._buf) == [0, 1, 2]  # three lanes did the work
    assert any(runner.last_dense) and runner.last_ops.shape == (7, len(b.exact.layers))
    for i, slot in enumerate(slots):
        for got, want, state in zip(runner.read_state(slot), ref_state, b.exact.state_names()):
            np.testing.assert_array_equal(got, want[i], err_msg=f"stream {i}: {state}")
    with pytest.raises(ValueError, match="threads"):
        EventStepRunner(b.exact, b.card, threads=0)


TRAINED = [name for name in ("default", "gesture3") if (BUNDLED / name / "card.json").is_file()]


@pytest.mark.parametrize("name", TRAINED)
def test_a_gesture_through_a_trained_bundle_equals_the_step_function(name):
    b = load_bundle(BUNDLED / name)
    frames = _gesture_frames(b, 40)
    assert frames.sum() > 0
    ref_rows, _ = _reference(b, frames)
    runner = load_runner(b, "event", "cpu")
    slot = runner.open()
    spikes = 0.0
    for t, (ref_out, ref_counts) in enumerate(ref_rows):
        res = runner.step([slot], frames[t])
        np.testing.assert_array_equal(res.out, ref_out, err_msg=f"step {t}")
        np.testing.assert_array_equal(res.counts, ref_counts, err_msg=f"step {t}")
        spikes += float(res.counts[0, 1:].sum())
    assert spikes > 0


def test_state_moves_between_backends(bundles):
    """A snapshot taken from the torch runner continues on the event runner, and back."""
    b = bundles["gesture3"]
    frames = random_frames(8, 1, b.card.frame_shape, seed=3)
    torch_r = load_runner(b, "torch", "cpu")
    event_r = load_runner(b, "event", "cpu")
    a, e = torch_r.open(), event_r.open()
    for f in frames[:4]:
        torch_r.step([a], f)
    event_r.write_state(e, torch_r.read_state(a))
    for f in frames[4:]:
        want, got = torch_r.step([a], f), event_r.step([e], f)
        np.testing.assert_array_equal(got.out, want.out)
        np.testing.assert_array_equal(got.counts, want.counts)
    for got, want in zip(event_r.read_state(e), torch_r.read_state(a)):
        np.testing.assert_array_equal(got, want)


def _window_counts(spikes: np.ndarray, shape: tuple[int, int, int], k: int, stride: int, pad: int) -> np.ndarray:
    """Per row, the (input spike, output position) pairs of a convolution: the spike map summed by
    an all-ones kernel, summed over the output."""
    x = torch.from_numpy(spikes.reshape(-1, *shape))
    ones = torch.ones(1, shape[0], k, k, dtype=x.dtype)
    return F.conv2d(x, ones, stride=stride, padding=pad).flatten(1).sum(1).numpy()


def test_reported_work_is_the_work_of_the_spikes(bundles):
    b = bundles["gesture3"]
    frames = random_frames(6, 3, b.card.frame_shape, rate=1.0, seed=5)
    runner = EventStepRunner(b.exact, b.card, crossovers=[SPARSE] * len(b.exact.layers))
    slots = [runner.open() for _ in range(3)]
    probe = _SpikeProbe()
    state = b.exact.init_state(3)
    for f in frames:
        runner.step(slots, f)
        with torch.no_grad():
            _, state = b.exact.step(torch.from_numpy(f), state, probe=probe)
        inputs = [np.clip(np.rint(f), 0, b.card.arithmetic.max_count), *probe.spikes[:-1]]
        for li, layer in enumerate(runner.event.layers):
            x = inputs[li].reshape(3, -1)
            if layer.kind == "fc":
                want = (x != 0).sum(1) * layer.out_shape[0]
            else:
                k = layer.weight.shape[1]
                stride = 2 if k == 4 else 1
                want = _window_counts((x != 0).astype(np.float32), layer.in_shape, k, stride, 1) * layer.out_shape[0]
            np.testing.assert_array_equal(runner.last_ops[:, li], want, err_msg=layer.name)
        probe.spikes.clear()
    dense = EventStepRunner(b.exact, b.card, crossovers=[DENSE] * len(b.exact.layers))
    dense.step([dense.open()], frames[0][:1])
    assert (dense.last_ops >= runner.last_ops[:1]).all()  # a dense product does every multiply


class _SpikeProbe:
    wants_membrane = False

    def __init__(self) -> None:
        self.spikes: list[np.ndarray] = []

    def __call__(self, layer, spikes, u) -> None:
        self.spikes.append(spikes[0].numpy())


def test_crossovers_are_measured_per_layer(bundles):
    net = EventNet(bundles["default"].exact)
    cross = measure_crossovers(net, batch=2, densities=(0.05, 0.5), repeat=1)
    assert len(cross) == len(net.layers) and all(c in (0.05, 0.5, 1.0) for c in cross)


def test_what_it_cannot_run_is_refused_clearly(tmp_path):
    from models.attention import AttentionConfig
    from models.config import preset
    from models.network import SpikingNet
    from models.runtime.exact import exact_network, exact_spec

    five = SpikingNet(preset("five", 3, AttentionConfig(), 4, (32, 32))).eval()
    with pytest.raises(ValueError, match="max pooling"):
        EventNet(exact_network(five, exact_spec(five)))
    with pytest.raises(TypeError, match="exact network"):
        EventNet(load_bundle(BUNDLED / "default").net)  # the float network as trained
    with pytest.raises(ValueError, match="step-mode bundles"):
        load_runner(BUNDLED / "asa-window", "event", "cpu")
    with pytest.raises(ValueError, match="CPU"):
        load_runner(BUNDLED / "default", "event", "cuda")
