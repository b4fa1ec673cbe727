"""Step runners (torch, ONNX Runtime) against the multi-step forward, slot table semantics, CUDA.

Every runner computes the bundle's exact form (docs/exact.md), so results are compared for
equality: no tolerance, no agreement fraction. test_exact_invariance.py varies batch compositions.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from runtime_support import STEP_KINDS

from models.runtime import OrtStepRunner, StepRunner, TorchStepRunner, load_runner
from models.runtime.export import add_spike_outputs
from models.runtime.ort_runner import make_session, ort_providers

BACKENDS = ("torch", "onnx")


class _Spikes:
    wants_membrane = False

    def __init__(self):
        self.s = []

    def __call__(self, layer, spikes, u):
        self.s.append(spikes.numpy())


def runner(bundle, backend, device="cpu", **kw):
    """A runner with one ONNX Runtime thread (see conftest.py)."""
    if backend == "onnx":
        kw.setdefault("threads", 1)
    return load_runner(bundle.path, backend, device, **kw)


def _run(runner: StepRunner, frames: np.ndarray):
    """Step B fresh slots through frames [T, B, ...]; outputs [T, B, K], counts [T, B, L]."""
    slots = [runner.open() for _ in range(frames.shape[1])]
    res = [runner.step(slots, f) for f in frames]
    for s in slots:
        runner.close(s)
    return np.stack([r.out for r in res]), np.stack([r.counts for r in res])


@pytest.mark.parametrize("key", STEP_KINDS)
def test_step_loops_equal_the_multistep_forward(bundles, frames_for, key):
    b = bundles[key]
    exact = b.exact
    frames = frames_for(b, 20, 3, seed=1)
    x = torch.from_numpy(frames)
    # spikes of every layer: multi-step forward, torch step loop, ONNX step loop (the shipped graph)
    fwd = _Spikes()
    with torch.no_grad():
        ref = exact(x, fwd)
    names = exact.state_names()
    sess = make_session(add_spike_outputs(b.onnx_path.read_bytes(), exact.layer_names), "cpu", 1)
    spike_outs = [f"{n}.spikes" for n in exact.layer_names]
    st = exact.init_state(3)
    so = [s.numpy() for s in st]
    for t in range(frames.shape[0]):
        p = _Spikes()
        with torch.no_grad():
            _, st = exact.step(x[t], st, p)
        res = sess.run([f"{n}.next" for n in names] + spike_outs, {"frames": frames[t], **dict(zip(names, so))})
        so = res[: len(names)]
        for a, b_ in zip(st, so):  # every membrane and running statistic, value for value
            np.testing.assert_array_equal(a.numpy(), b_)
        for i in range(len(exact.layer_names)):
            np.testing.assert_array_equal(p.s[i][0], fwd.s[i][t])
            np.testing.assert_array_equal(res[len(names) + i], fwd.s[i][t])
    assert all(s.sum() > 0 for s in fwd.s), "a silent layer makes the comparison vacuous"

    # the public runners: out / counts per step against the multi-step forward
    for backend, kw in (("torch", {}), ("onnx", {}), ("torch", {"rewrite": True})):
        r = runner(b, backend, **kw)
        out, counts = _run(r, frames)
        np.testing.assert_array_equal(out, ref.out.numpy(), err_msg=f"{backend} {kw}")
        np.testing.assert_array_equal(counts, ref.counts.numpy(), err_msg=f"{backend} {kw}")
    rewritten = [type(m).__name__ for m in r.net.modules()]
    assert "BatchNorm2d" not in rewritten and "AvgPool2d" not in rewritten  # really the rewritten graph
    if exact.cfg.attention.kind == "causal-asa":
        assert "StreamASA" in rewritten


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_and_close_clear_state(bundles, frames_for, backend):
    b = bundles["tiny-causal"]
    r = runner(b, backend, capacity=4)
    frames = frames_for(b, 6, 2, seed=3)
    a, c = r.open(), r.open()
    first = r.step([a], frames[0, :1])
    for t in range(1, 6):  # build up state in both
        r.step([a, c], frames[t])
    r.reset(a)
    again = r.step([a], frames[0, :1])
    np.testing.assert_array_equal(again.out, first.out)
    np.testing.assert_array_equal(again.counts, first.counts)

    r.close(c)
    tables = r._state if isinstance(r, TorchStepRunner) else r._tables
    for t in tables:
        assert not np.asarray(t[c].cpu() if isinstance(t, torch.Tensor) else t[c]).any()
    c2 = r.open()
    assert c2 == c  # the lowest free slot is reused ...
    fresh = r.step([c2], frames[0, :1])
    np.testing.assert_array_equal(fresh.counts, first.counts)  # ... and starts from rest
    assert r.active_slots == 2


def test_slot_errors(bundles):
    r = runner(bundles["tiny-none"], "onnx")
    s = r.open()
    frame = np.zeros((1, *r.frame_shape), np.float32)
    with pytest.raises(KeyError):
        r.step([s + 1], frame)
    with pytest.raises(ValueError):
        r.step([s, s], np.zeros((2, *r.frame_shape), np.float32))
    with pytest.raises(ValueError):
        r.step([s], np.zeros((1, 2, 5, 5), np.float32))
    r.close(s)
    with pytest.raises(KeyError):
        r.close(s)
    with pytest.raises(KeyError):
        r.reset(s)
    empty = r.step([], np.zeros((0, *r.frame_shape), np.float32))
    assert empty.out.shape == (0, r.num_classes)


def test_outputs_sops_energy_and_memory(bundles, frames_for):
    b = bundles["tiny-causal"]
    r = runner(b, "onnx")
    assert isinstance(r, OrtStepRunner) and r.providers == ["CPUExecutionProvider"]
    assert r.num_classes == 5 and r.layer_names == ("conv1", "conv2", "conv3", "fc1", "fc2")
    assert r.frame_shape == (2, 32, 32)
    slots = [r.open() for _ in range(3)]
    res = r.step(slots, frames_for(b, 1, 3)[0])
    assert res.out.dtype == res.counts.dtype == res.sops.dtype == res.energy_j.dtype == np.float32
    assert res.out.shape == (3, 5) and res.counts.shape == (3, 5) and res.evaluated.all()
    e = r.energy
    np.testing.assert_allclose(res.sops, res.counts @ np.asarray(e.fanout), rtol=1e-6)
    np.testing.assert_allclose(res.energy_j, e.e_mac_j * e.first_layer_macs + e.e_ac_j * res.sops, rtol=1e-6)
    assert [a.shape for a in r.read_state(slots[0])] == [tuple(s) for s in r.state_shapes]
    # conv h: 8*32*32 + 16*16*16 + 16*8*8, fc h: 64 + 5; causal ASA: (8+1) + (16+1) + (16+1)
    state = 4 * (8192 + 4096 + 1024 + 64 + 5 + 9 + 17 + 17)
    assert r.bytes_per_stream() == 2 * state  # two host pages (see OrtStepRunner._advance)
    assert runner(b, "torch").bytes_per_stream() == state


def test_host_pages_direct_and_gathered_steps_agree(bundles, frames_for):
    """The ONNX host runner steps a contiguous range of slots on one page in place (the slots flip
    pages; from the range's second call) and gathers any other composition; both must give what a
    lone stream gets."""
    b = bundles["tiny-causal"]
    frames = frames_for(b, 8, 4, seed=3)
    r, solo = runner(b, "onnx"), runner(b, "onnx")
    slots = [r.open() for _ in range(4)]
    plan = [[2, 0, 1], [1, 2, 0], [1, 3], [0, 1, 2, 3], [3, 2], [0, 2], [1, 0, 3, 2], [3], [0, 1, 2, 3]]
    sides, got = [], {i: [] for i in range(4)}
    for batch in plan:
        res = r.step([slots[i] for i in batch], np.stack([frames[len(got[i]), i] for i in batch]))
        for row, i in enumerate(batch):
            got[i].append(res.out[row])
        sides.append(r._side[:4].copy())
    assert (sides[0] == 0).all()  # a range met for the first time is gathered (no binding yet)
    assert (sides[1] == [1, 1, 1, 0]).all()  # the second time in place: slots 0-2 flip to page 1
    assert (sides[2] == sides[1]).all()  # gathered: 1 and 3 are neither a range nor on one page
    for i in range(4):
        s = solo.open()
        for t, out in enumerate(got[i]):
            np.testing.assert_array_equal(out, solo.step([s], frames[t, i][None]).out[0])
        solo.close(s)
    r.close(slots[0])
    assert r._side[slots[0]] == 0 and not any(p[0][slots[0]].any() for p in r._pages)


def test_provider_choice():
    assert ort_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert ort_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            ort_providers("cuda")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_runner_matches_cpu(bundles, frames_for, backend):
    if backend == "onnx" and "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA execution provider")
    b = bundles["tiny-causal"]
    frames = frames_for(b, 12, 4, seed=5)
    out_c, counts_c = _run(runner(b, backend), frames)
    r = runner(b, backend, "cuda")
    if backend == "onnx":
        assert r.on_cuda
    out_g, counts_g = _run(r, frames)
    np.testing.assert_array_equal(out_g, out_c)  # exact sums: the GPU computes the CPU's values
    np.testing.assert_array_equal(counts_g, counts_c)


@pytest.mark.cuda
@cuda
def test_cuda_compiled_torch_runner(bundles, frames_for):
    b = bundles["tiny-none"]
    frames = frames_for(b, 8, 3, seed=6)
    out_c, _ = _run(runner(b, "torch"), frames)
    out_g, _ = _run(runner(b, "torch", "cuda", compile=True), frames)
    # a compiled step may fuse a multiply and an add (outside the exactness guarantee): nearly equal
    assert np.mean(out_c == out_g) >= 0.999


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["default", "asa-window"])
def test_a_slot_state_moved_to_another_runner_continues_identically(name, backend):
    """read_state / write_state (resumable sessions): a stream's state taken out of one runner and put
    into another slot of another runner (of either backend) gives the same results from there on."""
    from pathlib import Path

    bundle = Path(__file__).resolve().parents[3] / "models" / "bundled" / name
    kw = {"threads": 1} if backend == "onnx" else {}
    src, dst = load_runner(bundle, backend, "cpu", **kw), load_runner(bundle, "onnx", "cpu", threads=1)
    frames = np.random.default_rng(1).poisson(0.8, (40, *src.frame_shape)).astype(np.float32)
    a = src.open()
    for f in frames[:25]:
        src.step([a], f[None])
    state = src.read_state(a)
    dst.open(), dst.open()
    b = dst.open()  # another slot number
    dst.write_state(b, state)
    for f in frames[25:]:
        x, y = src.step([a], f[None]), dst.step([b], f[None])
        np.testing.assert_array_equal(x.out, y.out)
        np.testing.assert_array_equal(x.counts, y.counts)
        assert x.evaluated[0] == y.evaluated[0]
    with pytest.raises(ValueError, match="float32 arrays of shapes"):
        dst.write_state(b, [s[..., :1] for s in state])
    with pytest.raises(ValueError, match="non-finite"):
        dst.write_state(b, [np.full_like(s, np.nan) for s in state])
