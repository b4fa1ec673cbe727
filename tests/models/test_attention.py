"""Attention modules (models/attention.py): masks pinned on hand-built inputs, the reference code's
defects shown fixed, the straight-through estimator, and causality of the streaming form.

Hand-built inputs are constant over (H, W) per (t, c), so F_avg = F_max = v and, with the initial
alpha = gamma = 0.5, the channel score is M' = (v + v)/2 + 0.5 v + 0.5 v = 2 v.
"""

from __future__ import annotations

import pytest
import torch

from models.attention import ASA, SA, AttentionConfig, CausalASA, SpatialMap, hard_mask, rank_mask
from models.instrument import count_params

ASA2 = AttentionConfig(kind="asa", variant=2)


def _const_maps(v: list[list[float]], hw: int = 2, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``v[t][c]`` -> ``[T, 1, C, hw, hw]`` with every pixel of (t, c) equal to v[t][c]."""
    return torch.tensor(v, dtype=dtype)[:, None, :, None, None].expand(-1, 1, -1, hw, hw).contiguous()


# ---- rank_mask -----------------------------------------------------------------------------------


def test_rank_mask_ties_go_to_lower_index() -> None:
    m = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0])
    assert rank_mask(m, 2, 0).tolist() == [False, True, True, False, False]
    assert rank_mask(m, 1, 0).tolist() == [False, True, False, False, False]
    assert rank_mask(torch.zeros(4), 3, 0).tolist() == [True, True, True, False]
    assert rank_mask(m, 0, 0).tolist() == [False] * 5
    assert rank_mask(m, 5, 0).tolist() == [True] * 5


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_rank_mask_equals_topk_on_distinct_values(dim: int, k: int) -> None:
    g = torch.Generator().manual_seed(k)
    m = torch.rand(6, 7, 8, generator=g)  # continuous: distinct with probability 1
    idx = m.topk(k, dim=dim).indices
    expected = torch.zeros_like(m, dtype=torch.bool).scatter(dim, idx, True)
    got = rank_mask(m, k, dim)
    assert got.dtype == torch.bool and got.shape == m.shape
    assert torch.equal(got, expected)
    assert (got.sum(dim) == k).all()


# ---- hard_mask (straight-through estimator) -------------------------------------------------------


def test_hard_mask_forward_exact_and_ste_backward() -> None:
    score = torch.tensor([-2.0, 0.0, 1.0, 3.0], requires_grad=True)
    select = torch.tensor([True, False, True, False])
    m = hard_mask(select, score, "ste")
    assert m.tolist() == [1.0, 0.0, 1.0, 0.0]  # exactly 0/1, not 1 - 2**-24
    m.sum().backward()
    s = torch.sigmoid(score.detach())
    assert score.grad is not None and torch.allclose(score.grad, s * (1 - s))  # d sigmoid / d score
    m_none = hard_mask(select, score, "none")
    assert m_none.tolist() == [1.0, 0.0, 1.0, 0.0] and not m_none.requires_grad


def test_hard_mask_ste_forward_is_exact_in_float32() -> None:
    # (1 + s) - s is not 1 in float32 for many s; the mask must still be exactly 0/1.
    score = torch.randn(100_000, generator=torch.Generator().manual_seed(0), requires_grad=True)
    m = hard_mask(torch.ones(100_000, dtype=torch.bool), score, "ste")
    assert torch.equal(m, torch.ones(100_000))


# ---- ASA, paper (window) form ---------------------------------------------------------------------

# T = 4, C = 4 pooled values v[t][c] (score 2 v, same ranking):
V = [
    [1.0, 2.0, 3.0, 4.0],
    [5.0, 6.0, 7.0, 8.0],
    [9.0, 10.0, 11.0, 12.0],
    [16.0, 15.0, 14.0, 13.0],
]
# top floor(0.5 * 4) = 2 channels of each row:     top 2 timesteps of each column (t2 and t3 everywhere):
TOP_C = [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0]]
TOP_T = [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
# M1 = exactly one of the two selects (t, c): (t2, c2/c3) are selected by both -> 0; (t0, c0) by none -> 0.
M1 = [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]]


def test_channel_score_formula() -> None:
    # One map [[1, 2], [3, 6]]: F_avg = 3, F_max = 6; M' = 9/2 + 0.5*3 + 0.5*6 = 9.
    asa = ASA(1, 1, ASA2).double()
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]], dtype=torch.float64).reshape(1, 1, 1, 2, 2)
    assert asa.score(x).item() == pytest.approx(9.0)
    with torch.no_grad():
        asa.score.alpha.fill_(2.0)
        asa.score.gamma.fill_(-1.0)
    # 4.5 + 2*3 - 6 = 4.5
    assert asa.score(x).item() == pytest.approx(4.5)


def test_asa_masks_hand_built() -> None:
    asa = ASA(4, 4, ASA2).double()
    x = _const_maps(V)
    assert asa.score(x)[:, 0].tolist() == [[2 * v for v in row] for row in V]
    m1, m2 = asa.masks(x)
    assert m1.shape == (4, 1, 4)
    assert m1[:, 0].tolist() == M1
    assert torch.equal(m1 + m2, torch.ones_like(m1))
    # the XOR rule spelled out against both selections
    top_c, top_t = torch.tensor(TOP_C, dtype=torch.bool), torch.tensor(TOP_T, dtype=torch.bool)
    assert torch.equal(m1[:, 0].bool(), top_c ^ top_t)


def test_asa1_mixes_along_time() -> None:
    # W (T x T) = time reversal: scores become m[T-1-t], so the masks are those of the reversed input.
    asa1 = ASA(4, 4, AttentionConfig(kind="asa", variant=1)).double()
    assert isinstance(asa1.mix, torch.nn.Linear) and asa1.mix.weight.shape == (4, 4)
    with torch.no_grad():
        asa1.mix.weight.copy_(torch.eye(4).flip(0))
    asa2 = ASA(4, 4, ASA2).double()
    x = _const_maps(V)
    m1_mixed, _ = asa1.masks(x)
    m1_rev, _ = asa2.masks(x.flip(0))
    assert torch.equal(m1_mixed, m1_rev)
    assert not torch.equal(m1_mixed, asa2.masks(x)[0])
    # with W = identity, ASA-1 is ASA-2
    with torch.no_grad():
        asa1.mix.weight.copy_(torch.eye(4))
    assert asa1.masks(x)[0][:, 0].tolist() == M1


def test_asa1_reduction_builds_w1_w2() -> None:
    asa = ASA(8, 8, AttentionConfig(kind="asa", variant=1, r=4))
    w1, w2 = asa.mix[0], asa.mix[2]
    assert w1.weight.shape == (2, 8) and w2.weight.shape == (8, 2)  # T -> T/r -> T


def test_asa_with_zero_spatial_conv_is_half_input() -> None:
    # f_S = sigmoid(0) = 1/2 for both groups: Xbar = (X M1 + X M2) / 2 = X / 2 because M1 + M2 = 1.
    asa = ASA(4, 4, ASA2).double()
    for sa in (asa.sa1, asa.sa2):
        torch.nn.init.zeros_(sa.conv.weight)
    x = torch.randn(4, 3, 4, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(asa(x), x / 2)


def test_asa_masks_complementary_and_balanced_random() -> None:
    asa = ASA(6, 8, ASA2)
    x = torch.randn(8, 5, 6, 4, 4, generator=torch.Generator().manual_seed(3))
    m1, m2 = asa.masks(x)
    assert torch.equal(m1 + m2, torch.ones_like(m1))
    assert set(m1.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("variant", [1, 2])
def test_asa_batch_independence(variant: int) -> None:
    torch.manual_seed(0)
    asa = ASA(6, 8, AttentionConfig(kind="asa", variant=variant)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, 6, 5, 5, generator=g)
    other = torch.randn(8, 3, 6, 5, 5, generator=g) * 3 + 1  # very different batch-mates
    alone = asa(x[:, :1])  # batch size 1 works (the reference's .squeeze() broke it)
    m_alone = asa.masks(x[:, :1])[0]
    batches = ((x, 0), (torch.cat([other, x[:, :1]], 1), 3), (torch.cat([x[:, :1], other[:, :1]], 1), 0))
    for batch, pos in batches:
        out = asa(batch)
        assert torch.equal(asa.masks(batch)[0][:, pos : pos + 1], m_alone)
        assert torch.allclose(out[:, pos : pos + 1], alone, rtol=0, atol=1e-6)
    # same check in float64, exactly
    asa64, x64, o64 = asa.double(), x.double(), other.double()
    assert torch.equal(asa64(torch.cat([o64, x64[:, :1]], 1))[:, 3:], asa64(x64[:, :1]))


def test_asa_rejects_wrong_window() -> None:
    asa = ASA(4, 4, ASA2)
    with pytest.raises(ValueError):
        asa(torch.randn(5, 1, 4, 2, 2))
    with pytest.raises(ValueError):
        ASA(4, 4, AttentionConfig(kind="causal-asa"))


def _asa_grads(cfg: AttentionConfig) -> dict[str, torch.Tensor | None]:
    torch.manual_seed(0)
    asa = ASA(6, 8, cfg)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, 6, 5, 5, generator=g)
    target = torch.randn(8, 3, 6, 5, 5, generator=g)
    ((asa(x) - target) ** 2).sum().backward()
    return {name: p.grad for name, p in asa.named_parameters()}


@pytest.mark.parametrize("r", [1, 2])
def test_asa1_ste_gradients_reach_scoring_parameters(r: int) -> None:
    grads = _asa_grads(AttentionConfig(kind="asa", variant=1, r=r, grad="ste"))
    mix = [n for n in grads if n.startswith("mix.")]
    assert len(mix) == (1 if r == 1 else 2)  # W (r = 1) or W1, W2
    for name in ["score.alpha", "score.gamma", *mix, "sa1.conv.weight", "sa2.conv.weight"]:
        g = grads[name]
        assert g is not None and g.abs().sum() > 0, name


def test_asa2_ste_gradients_reach_alpha_gamma() -> None:
    grads = _asa_grads(AttentionConfig(kind="asa", variant=2, grad="ste"))
    for name in ["score.alpha", "score.gamma"]:
        g = grads[name]
        assert g is not None and g.abs() > 0, name


@pytest.mark.parametrize("variant", [1, 2])
def test_grad_none_is_reference_behaviour(variant: int) -> None:
    # Hard 0/1 masks: nothing reaches the scoring parameters; the spatial maps still learn.
    grads = _asa_grads(AttentionConfig(kind="asa", variant=variant, r=2, grad="none"))
    scoring = [n for n in grads if n.startswith(("score.", "mix."))]
    assert len(scoring) == (4 if variant == 1 else 2)
    for name in scoring:
        g = grads[name]
        assert g is None or torch.count_nonzero(g) == 0, name
    for name in ["sa1.conv.weight", "sa2.conv.weight"]:
        g = grads[name]
        assert g is not None and g.abs().sum() > 0


@pytest.mark.parametrize("variant", [1, 2])
def test_forward_identical_between_ste_and_none(variant: int) -> None:
    torch.manual_seed(0)
    ste = ASA(6, 8, AttentionConfig(kind="asa", variant=variant, r=2, grad="ste"))
    ref = ASA(6, 8, AttentionConfig(kind="asa", variant=variant, r=2, grad="none"))
    ref.load_state_dict(ste.state_dict())
    x = torch.randn(8, 4, 6, 5, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ste(x), ref(x))
    m_ste, m2_ste = ste.masks(x)
    m_ref, m2_ref = ref.masks(x)
    assert torch.equal(m_ste, m_ref) and torch.equal(m2_ste, m2_ref)


# ---- SA and SpatialMap ----------------------------------------------------------------------------


def _sig(v: list[float]) -> torch.Tensor:
    return torch.sigmoid(torch.tensor(v, dtype=torch.float64)).reshape(1, 1, 1, len(v))


def test_spatial_map_hand_computed() -> None:
    # conv = 1 on the centre tap of the mean channel: map = sigmoid(mean over dim 1 / scale).
    sm = SpatialMap().double()
    with torch.no_grad():
        sm.conv.weight.zero_()
        sm.conv.weight[0, 0, 1, 1] = 1.0
    z = torch.tensor([[[1.0, -2.0]], [[3.0, 0.0]]], dtype=torch.float64).reshape(1, 2, 1, 2)  # K = 2 maps 1x2
    # mean over K: [2, -1]
    assert torch.allclose(sm(z), _sig([2.0, -1.0]))
    assert torch.allclose(sm(z, 0.5), _sig([4.0, -2.0]))
    # centre tap of the max channel: map = sigmoid(max) = sigmoid([3, 0])
    with torch.no_grad():
        sm.conv.weight.zero_()
        sm.conv.weight[0, 1, 1, 1] = 1.0
    assert torch.allclose(sm(z), _sig([3.0, 0.0]))


def test_sa_pools_over_time_and_channels() -> None:
    # x[t, b, c] constant maps V; the mean over (T, C) at every pixel is 8.5, the map sigmoid(8.5).
    sa = SA().double()
    with torch.no_grad():
        sa.sa.conv.weight.zero_()
        sa.sa.conv.weight[0, 0, 1, 1] = 1.0
    x = _const_maps(V)
    assert torch.allclose(sa(x), torch.sigmoid(torch.tensor(8.5, dtype=torch.float64)) * x)
    assert count_params(sa) == 18


# ---- CausalASA, streaming form --------------------------------------------------------------------


def test_causal_asa_running_mean_hand_computed() -> None:
    # C = 2, rho = 0.5, lam = 0.5 (k = 1 channel). v per (t, c); scores m = 2 v:
    #   c0: m = 2, 6, 4, 10      c1: m = 4, 2, 8, 6
    # den: 1, 1.5, 1.75, 1.875
    # num c0: 2, 0.5*2+6 = 7, 3.5+4 = 7.5, 3.75+10 = 13.75  -> mbar 2, 4.667, 4.286, 7.333
    # num c1: 4, 2+2 = 4,   2+8 = 10,   5+6 = 11           -> mbar 4, 2.667, 5.714, 5.867
    # time selection m >= mbar: c0 T T F T ; c1 T F T T
    # top channel per t: c1, c0, c1, c0
    # M1 = XOR: t0 [1, 0]  t1 [0, 0]  t2 [0, 0]  t3 [0, 1]
    cfg = AttentionConfig(kind="causal-asa", rho=0.5)
    asa = CausalASA(2, cfg).double()
    x = _const_maps([[1.0, 2.0], [3.0, 1.0], [2.0, 4.0], [5.0, 3.0]])
    num, den = asa.init_state(1, x)
    assert num.shape == (1, 2) and den.shape == (1, 1) and num.abs().sum() == 0 and den.abs().sum() == 0
    exp_num = [[2.0, 4.0], [7.0, 4.0], [7.5, 10.0], [13.75, 11.0]]
    exp_den = [1.0, 1.5, 1.75, 1.875]
    exp_m1 = [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    for t in range(4):
        m1, m2, num, den = asa.masks_step(x[t], num, den)
        assert num[0].tolist() == pytest.approx(exp_num[t])
        assert den[0].tolist() == pytest.approx([exp_den[t]])
        assert m1[0].tolist() == exp_m1[t], t
        assert torch.equal(m1 + m2, torch.ones_like(m1))
    # forward() over the window returns the same final state
    _, (num_f, den_f) = asa(x)
    assert torch.equal(num_f, num) and torch.equal(den_f, den)


def test_causal_asa_first_step_selects_every_timestep() -> None:
    # At t = 0, mbar = m, so the time selection is all-true and M1 = not top_c.
    asa = CausalASA(4, AttentionConfig(kind="causal-asa"))
    x = _const_maps([[3.0, 1.0, 4.0, 2.0]], dtype=torch.float32)
    m1, _, _, _ = asa.masks_step(x[0], *asa.init_state(1, x))
    assert m1[0].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_causal_asa_is_causal_for_every_t() -> None:
    torch.manual_seed(0)
    asa = CausalASA(6, AttentionConfig(kind="causal-asa"))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, 6, 5, 5, generator=g)
    ref, _ = asa(x)
    for t in range(x.shape[0]):
        x2 = x.clone()
        x2[t + 1 :] = torch.randn(x.shape[0] - t - 1, 3, 6, 5, 5, generator=g) * 5
        out, _ = asa(x2)
        assert torch.equal(out[: t + 1], ref[: t + 1]), t
        if t + 1 < x.shape[0]:
            assert not torch.equal(out[t + 1 :], ref[t + 1 :])  # the future did change


def test_causal_asa_forward_equals_step_loop_and_batch_independence() -> None:
    torch.manual_seed(0)
    asa = CausalASA(6, AttentionConfig(kind="causal-asa"))
    x = torch.randn(5, 3, 6, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    asa.double()
    out, (num, den) = asa(x)
    n, d = asa.init_state(3, x)
    for t in range(5):
        y, n, d = asa.step(x[t], n, d)
        assert torch.equal(y, out[t])
    assert torch.equal(n, num) and torch.equal(d, den)
    assert torch.equal(asa(x[:, 1:2])[0], out[:, 1:2])  # alone == in the batch


def test_causal_asa_ste_gradients() -> None:
    torch.manual_seed(0)
    asa = CausalASA(6, AttentionConfig(kind="causal-asa"))
    x = torch.randn(5, 2, 6, 4, 4, generator=torch.Generator().manual_seed(6))
    out, _ = asa(x)
    (out**2).sum().backward()
    for name, p in asa.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("channels", [4, 128])
def test_causal_asa_parameter_count(channels: int) -> None:
    # alpha, gamma + two 3x3 convs from 2 maps to 1, no bias: 2 + 2 * (2 * 3 * 3) = 38, whatever C is.
    asa = CausalASA(channels, AttentionConfig(kind="causal-asa"))
    assert count_params(asa) == 38
    assert count_params(ASA(channels, 16, ASA2)) == 38
    assert count_params(ASA(channels, 16, AttentionConfig(kind="asa", variant=1))) == 38 + 16 * 16
