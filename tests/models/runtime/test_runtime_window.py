"""Window mode (paper ASA): window graph export, rolling buffers evaluated every hop steps, each
stream's windows equal to the window alone through the exact network on either backend."""

import numpy as np
import onnx
import pytest
import torch

from models.runtime.loading import load_runner
from models.runtime.window import WindowRunner, window_means


def test_window_bundle(bundles):
    b = bundles["tiny-asa"]
    c = b.card
    assert c.mode == "window" and c.attention == "asa" and c.timesteps == 4 and c.hop == 2
    assert b.onnx_path.name == "window.onnx" and c.verification.passed
    assert all(r > 0 for r in c.verification.layer_rates)
    g = onnx.load(str(b.onnx_path)).graph
    assert [i.name for i in g.input] == ["frames"] and [o.name for o in g.output] == ["out", "counts"]
    dims = g.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 4 and dims[1].dim_param  # [T, batch, 2, H, W]


@pytest.mark.parametrize("backend", ("onnx", "torch"))
def test_rolling_window_evaluated_every_hop(bundles, frames_for, backend):
    b = bundles["tiny-asa"]
    r = load_runner(b.path, backend, "cpu", **({"threads": 1} if backend == "onnx" else {}))
    assert isinstance(r, WindowRunner) and r.hop == 2 and r.timesteps == 4
    frames = frames_for(b, 12, 2, seed=2)
    a = r.open()
    for t in range(3):  # stream a starts 3 steps earlier than c
        res = r.step([a], frames[t, :1])
        assert not res.evaluated[0] and not res.out.any()
    c = r.open()
    seen_a, seen_c = 3, 0
    for t in range(3, 12):
        res = r.step([c, a], np.stack([frames[seen_c, 1], frames[t, 0]]))
        seen_a, seen_c = seen_a + 1, seen_c + 1
        for row, (seen, stream) in enumerate(((seen_c, 1), (seen_a, 0))):
            due = seen >= 4 and (seen - 4) % 2 == 0
            assert res.evaluated[row] == due
            if due:
                window = torch.from_numpy(frames[seen - 4 : seen, stream : stream + 1])
                with torch.no_grad():  # the window alone through the exact network: equal, not close
                    out, counts = window_means(b.exact(window))
                np.testing.assert_array_equal(res.out[row], out[0].numpy())
                np.testing.assert_array_equal(res.counts[row], counts[0].numpy())
    assert r.bytes_per_stream() == 4 * (4 * 2 * 32 * 32 + 5 + 5) + 8
    r.reset(a)
    res = r.step([a], frames[0, :1])
    assert not res.evaluated[0] and not res.out.any()  # buffer and latest output cleared
