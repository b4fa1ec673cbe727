"""Advanced Spatial Attention (ASA, Yao et al. ICCV 2023), its causal streaming form, and plain SA.

Every module here maps the pre-LIF current ``X`` of a conv block to ``Xbar`` of the same shape, which
then drives the LIF neurons: ``U[t] = H[t-1] + Xbar[t]``.

* :class:`ASA` is the paper's module over a whole window ``[T, B, C, H, W]`` (docs/attention.md), with the
  public reference code's defects fixed: masks are built per sample (a sample's output never depends
  on its batch-mates), batch size 1 works, and the channel-importance parameters learn (see
  :func:`hard_mask`).
* :class:`CausalASA` is this project's streaming form: everything it computes at ``t`` uses only
  inputs up to ``t``; its running statistic is explicit state, like a membrane potential.
  docs/attention.md explains the design.
* :class:`SA` is spatial attention alone (the paper's ablation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

AttentionKind = Literal["none", "sa", "asa", "causal-asa"]
MaskGrad = Literal["ste", "none"]

TIE_RTOL = 1e-4  # scores this close to the causal running mean count as equal to it


@dataclass(frozen=True)
class AttentionConfig:
    """Which attention a conv block uses and its hyper-parameters.

    ``variant`` picks ASA-1 (learnt temporal mixing of channel scores, window form only) or ASA-2
    (pooled scores used directly). ``grad="none"`` reproduces the reference code, where the hard
    masks stop every gradient to the scoring parameters. ``rho`` is the decay of the causal form's
    running channel-score average.
    """

    kind: AttentionKind = "none"
    variant: Literal[1, 2] = 2
    lam: float = 0.5
    r: int = 1
    grad: MaskGrad = "ste"
    rho: float = 0.8

    @property
    def causal(self) -> bool:
        """True when the block can be advanced one timestep at a time."""
        return self.kind in ("none", "causal-asa")


def rank_mask(m: Tensor, k: int, dim: int) -> Tensor:
    """Boolean mask of the ``k`` largest entries of ``m`` along ``dim``, independently per slice.

    Ties go to the lower index. Built from pairwise comparisons instead of ``topk`` so that every
    backend (PyTorch, ONNX Runtime) breaks ties identically and the graph exports as plain operators.
    """
    v = m.movedim(dim, -1)
    a, b = v.unsqueeze(-1), v.unsqueeze(-2)  # a[..., i, 0], b[..., 0, j]
    idx = torch.arange(v.shape[-1], device=m.device)
    beats = (b > a) | ((b == a) & (idx < idx.unsqueeze(-1)))  # [..., i, j]: j ranks above i
    return (beats.sum(dim=-1) < k).movedim(-1, dim)


def hard_mask(select: Tensor, score: Tensor, grad: MaskGrad) -> Tensor:
    """0/1 mask in the forward pass; with ``grad="ste"`` a straight-through estimator behind it.

    The forward value is exactly the hard mask of the paper. Backward, the mask is treated as
    ``sigmoid(score)``, so the loss reaches the parameters that produced the channel scores
    (``alpha``, ``gamma``, ``W1``, ``W2``); in the reference code those never receive a gradient.
    """
    hard = select.to(score.dtype)
    if grad == "none" or not score.requires_grad:  # the estimator adds exactly 0 to the forward value
        return hard
    soft = torch.sigmoid(score)
    # Parenthesised so the forward value is exactly 0 or 1: ``(hard + soft) - soft`` rounds to
    # 1 - 2**-24 for about one "1" in five in float32.
    return hard + (soft - soft.detach())


class SpatialMap(nn.Module):
    """``f_S(Z) = sigmoid(conv3x3([mean(Z); max(Z)]))`` with mean and max over dim 1 of ``[B, K, H, W]``.

    ``mean_scale`` undoes the zeros a group mask leaves (the reference divides by ``lam``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=3, padding=1, bias=False)

    def forward(self, z: Tensor, mean_scale: float = 1.0) -> Tensor:
        pooled = torch.cat([z.mean(dim=1, keepdim=True) / mean_scale, z.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class _ChannelScore(nn.Module):
    """g1's pooled part: ``M' = (F_avg + F_max)/2 + alpha F_avg + gamma F_max`` per (t, c)."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.gamma = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: Tensor) -> Tensor:
        f_avg, f_max = x.mean(dim=(-2, -1)), x.amax(dim=(-2, -1))
        return 0.5 * (f_avg + f_max) + self.alpha * f_avg + self.gamma * f_max


class ASA(nn.Module):
    """The paper's ASA over a window. Input and output ``[T, B, C, H, W]``.

    g2 selects, per sample, the top ``floor(lam*C)`` channels at each t and the top ``floor(lam*T)``
    timesteps of each channel; as in the reference code, (t, c) is "important" (M1 = 1) where exactly
    one of the two selects it, and M2 = 1 - M1.
    """

    def __init__(self, channels: int, timesteps: int, cfg: AttentionConfig) -> None:
        super().__init__()
        if cfg.kind != "asa":
            raise ValueError(f"ASA built from attention kind {cfg.kind!r}")
        self.cfg, self.channels, self.timesteps = cfg, channels, timesteps
        self.score = _ChannelScore()
        if cfg.variant == 1:  # temporal mixing of the scores, shared over channels
            hidden = max(1, timesteps // cfg.r)
            self.mix: nn.Module = (
                nn.Linear(timesteps, timesteps, bias=False)
                if cfg.r == 1
                else nn.Sequential(
                    nn.Linear(timesteps, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, timesteps, bias=False)
                )
            )
        else:
            self.mix = nn.Identity()
        self.sa1, self.sa2 = SpatialMap(), SpatialMap()

    def masks(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Complementary masks ``M1, M2`` of shape ``[T, B, C]``."""
        t, _, c = x.shape[:3]
        if t != self.timesteps:
            raise ValueError(f"ASA was built for T={self.timesteps}, got a window of {t} timesteps")
        m = self.score(x)  # [T, B, C]
        m = self.mix(m.permute(1, 2, 0)).permute(2, 0, 1)  # mix along T
        top_c = rank_mask(m, int(c * self.cfg.lam), dim=2)
        top_t = rank_mask(m, int(t * self.cfg.lam), dim=0)
        m1 = hard_mask(top_c ^ top_t, m, self.cfg.grad)
        return m1, 1 - m1

    def forward(self, x: Tensor) -> Tensor:
        m1, m2 = self.masks(x)
        z1, z2 = x * m1[..., None, None], x * m2[..., None, None]
        lam = self.cfg.lam
        a1 = self.sa1(_join_tc(z1), lam)  # [B, 1, H, W], shared by every t and c
        a2 = self.sa2(_join_tc(z2), 1 - lam)
        return a1 * z1 + a2 * z2


def _join_tc(z: Tensor) -> Tensor:
    """``[T, B, C, H, W] -> [B, T*C, H, W]``."""
    t, b, c, h, w = z.shape
    return z.permute(1, 0, 2, 3, 4).reshape(b, t * c, h, w)


class SA(nn.Module):
    """Spatial attention alone over the window: ``Xbar = f_S(X) * X``, pooled over (T, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.sa = SpatialMap()

    def forward(self, x: Tensor) -> Tensor:
        return self.sa(_join_tc(x)) * x


class CausalASA(nn.Module):
    """ASA for streams: per-timestep channel split and spatial maps, causal running statistics.

    At each t, with ``m = M'[t]`` the pooled channel scores of ``X[t]`` (same g1 as ASA-2):

    * channel selection: the top ``floor(lam*C)`` channels of ``m`` (the paper's top-k over C);
    * time selection: ``m >= mbar[t]`` where ``mbar`` is the channel's exponentially weighted mean
      score up to and including t (the causal stand-in for "t is among this channel's top timesteps");
    * ``M1`` = exactly one of the two, as in the paper; ``M2 = 1 - M1``;
    * one spatial map per group from ``X[t] * M`` pooled over channels at this t only.

    State (zeros at rest): ``num`` [B, C] and ``den`` [B, 1], the weighted sum of past scores and of
    their weights, ``num <- rho*num + m``, ``den <- rho*den + 1``, ``mbar = num / den``.
    Parameters: alpha, gamma and two 3x3 convolutions (2 + 2*18 per block).
    """

    # How the top channels are picked; the export swaps in ONNX's TopK, which ranks ties the same way.
    top_channels = staticmethod(rank_mask)

    def __init__(self, channels: int, cfg: AttentionConfig) -> None:
        super().__init__()
        if cfg.kind != "causal-asa":
            raise ValueError(f"CausalASA built from attention kind {cfg.kind!r}")
        self.cfg, self.channels = cfg, channels
        self.score = _ChannelScore()
        self.sa1, self.sa2 = SpatialMap(), SpatialMap()

    def init_state(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        return like.new_zeros(batch, self.channels), like.new_zeros(batch, 1)

    def masks_step(self, x: Tensor, num: Tensor, den: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``x [B, C, H, W] -> (M1 [B, C], M2, num, den)``."""
        m = self.score(x)
        num = self.cfg.rho * num + m.detach()
        den = self.cfg.rho * den + 1
        m1, m2 = self._split(m, num, den)
        return m1, m2, num, den

    def _split(self, m: Tensor, num: Tensor, den: Tensor) -> tuple[Tensor, Tensor]:
        """``M1, M2`` from the scores ``m [..., C]`` and the running statistics already updated with them."""
        top_c = self.top_channels(m, int(self.channels * self.cfg.lam), dim=-1)
        mbar = num / den
        # ">=" with a relative tolerance: a channel whose input is steady sits exactly on its own
        # running mean, and float rounding (which differs between backends and with BN folding)
        # must not decide its group.
        top_t = m >= mbar - TIE_RTOL * mbar.abs()
        m1 = hard_mask(top_c ^ top_t, m, self.cfg.grad)
        return m1, 1 - m1

    def _attend(self, x: Tensor, m1: Tensor, m2: Tensor) -> Tensor:
        """``Xbar`` from ``x [N, C, H, W]`` and the masks ``[N, C]``."""
        z1, z2 = x * m1[..., None, None], x * m2[..., None, None]
        lam = self.cfg.lam
        return self.sa1(z1, lam) * z1 + self.sa2(z2, 1 - lam) * z2

    def step(self, x: Tensor, num: Tensor, den: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m1, m2, num, den = self.masks_step(x, num, den)
        return self._attend(x, m1, m2), num, den

    def masks(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """``M1, M2 [T, B, C]`` of a window ``x [T, B, C, H, W]`` from ``state`` (rest by default), and
        the state after it: what :meth:`masks_step` gives step by step, with only the running
        statistics (``[B, C]``) in a loop over t."""
        num, den = self.init_state(x.shape[1], x) if state is None else state
        m = self.score(x)  # [T, B, C]
        nums, dens = [], []
        for mt in m.detach():
            num, den = self.cfg.rho * num + mt, self.cfg.rho * den + 1
            nums.append(num)
            dens.append(den)
        m1, m2 = self._split(m, torch.stack(nums), torch.stack(dens))
        return m1, m2, (num, den)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The steps over ``x [T, B, C, H, W]`` at once: masks (:meth:`masks`) and spatial maps are
        computed for every t together."""
        m1, m2, state = self.masks(x, state)
        y = self._attend(x.flatten(0, 1), m1.flatten(0, 1), m2.flatten(0, 1))
        return y.unflatten(0, x.shape[:2]), state
