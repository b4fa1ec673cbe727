"""The training loop: data, model, Adam with cosine warm restarts, validation, checkpoints, resume.

A run lives in ``run_dir``: ``config.yaml`` (the :class:`TrainConfig`), ``metrics.jsonl`` (one JSON
line per epoch), ``last.pt`` (after every epoch) and ``best.pt`` (best validation accuracy by majority
vote). Checkpoints (:mod:`training.checkpoint`) hold every entry of
:class:`~training.checkpoint.Checkpoint`: the network (config, model), its data (dataset, classes,
sensor, ds, dt_us, timesteps), the validation metrics, the training config and command, and the
training state (optimizer, scheduler, scaler, epoch, best, rng per rank).

Resume restores all of them; with the same configuration the continued run is the run that was not
interrupted (same data order, crops, dropout masks), on the CPU bit for bit.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, DistributedSampler

from models.instrument import EnergyModel
from models.machine import describe
from models.network import SpikingNet
from training import distributed as D
from training.checkpoint import Checkpoint, DataInfo, Metrics, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.data_source import binner_for, frame_dataset, open_source
from training.evaluate import Predictions, accuracies, predict
from training.frames import EventSource


def rate_loss(rate: torch.Tensor, label: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Loss on the output firing rate ``[B, K]`` (mean over T of the output spikes).

    ``mse``: mean squared error against the one-hot label (the paper's loss); ``ce``: cross-entropy
    with the rates as logits.
    """
    if kind == "mse":
        return F.mse_loss(rate, F.one_hot(label, rate.shape[1]).to(rate.dtype))
    if kind == "ce":
        return F.cross_entropy(rate, label)
    raise ValueError(f"unknown loss {kind!r}")


# ---- random state ----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's random state in checkpoint-safe types (tensors, lists, numbers)."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(s: dict[str, Any]) -> None:
    version, state, gauss = s["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ---- the trainer -----------------------------------------------------------------------------------
class Trainer:
    """One training run. ``sources`` (train, validation) replace the configured dataset (tests);
    ``resume``: a run directory (its ``last.pt``), a checkpoint file or a loaded checkpoint."""

    def __init__(
        self,
        cfg: TrainConfig,
        command: str | None = None,
        resume: str | Path | Checkpoint | None = None,
        sources: tuple[EventSource, EventSource] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg, self.command = cfg, command or cfg.to_command()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dist, self.device = D.init_distributed(cfg.device)
        self.main = self.dist.is_main
        self.progress = progress and self.main
        self.run_dir = Path(cfg.run_dir)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.use_bf16 = cfg.cpu_bf16 and self.device.type == "cpu"

        train_src, val_src = sources or (open_source(cfg, "train"), open_source(cfg, cfg.val_split))
        self.classes = [str(c) for c in train_src.classes]
        self.sensor = train_src.sensor
        self.train_data = frame_dataset(cfg, train_src, "train", train=True)
        self.val_data = frame_dataset(cfg, val_src, cfg.val_split, train=False)

        seed_everything(cfg.seed)  # same initial weights on every rank
        _, h, w = self.train_data.frame_shape
        self.net_cfg = cfg.network_config(len(self.classes), (h, w))
        self.net = SpikingNet(self.net_cfg).to(self.device)
        self.energy = EnergyModel.from_network(self.net)
        self.model = D.wrap_model(self.net, self.dist, self.device, cfg.sync_bn, find_unused=cfg.grad == "none")
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            self.optimizer, T_0=cfg.restart_epochs or cfg.epochs, T_mult=cfg.restart_mult, eta_min=cfg.min_lr
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.sampler = DistributedSampler(
            self.train_data, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=cfg.seed
        )
        self.epoch, self.best, self.metrics = 0, -math.inf, self._empty_metrics()
        self.machines = [describe(self.device)]  # rank 0's; a resumed run's earlier machines first
        if self.dist.rank:
            torch.manual_seed(cfg.seed + self.dist.rank)  # own dropout masks per rank
        if resume is not None:
            self._restore(resume if isinstance(resume, Checkpoint) else load_checkpoint(resume, resume=True))

    # ---- checkpoints ---------------------------------------------------------------------------
    def _empty_metrics(self) -> dict[str, Any]:
        return {"accuracy": math.nan, "nasfr": math.nan, "split": self.cfg.val_split, "data": self.cfg.data_description}

    def data_info(self) -> DataInfo:
        return {
            "dataset": self.cfg.dataset,
            "classes": self.classes,
            "sensor": [self.sensor.width, self.sensor.height],
            "ds": self.cfg.ds,
            "dt_us": self.cfg.dt_us,
            "timesteps": self.cfg.timesteps,
        }

    def checkpoint(self, rng: list[dict[str, Any]]) -> Checkpoint:
        return Checkpoint(
            config=self.net_cfg.to_dict(),
            model=self.net.state_dict(),
            data=self.data_info(),
            metrics=cast(Metrics, dict(self.metrics)),
            train_config=self.cfg.to_dict(),
            command=self.command,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            epoch=self.epoch,
            best=self.best,
            rng=rng,
            machines=self.machines,
        )

    def _restore(self, ck: Checkpoint) -> None:
        if not ck.resumable:
            raise ValueError(f"{ck.name}: holds no training state to resume")
        if ck.config != self.net_cfg.to_dict():
            raise ValueError(f"{ck.name}: the checkpoint's network does not match this configuration")
        assert ck.optimizer is not None and ck.scheduler is not None and ck.rng is not None
        epoch, best = int(ck.epoch or 0), float(ck.best if ck.best is not None else -math.inf)
        self.net.load_state_dict(ck.model)
        self.optimizer.load_state_dict(ck.optimizer)
        self.scheduler.load_state_dict(ck.scheduler)
        want = (self.cfg.restart_epochs or self.cfg.epochs, self.cfg.restart_mult, self.cfg.min_lr)
        if (self.scheduler.T_0, self.scheduler.T_mult, self.scheduler.eta_min) != want:
            # the schedule was changed on resume (e.g. more epochs): the new one, at this epoch
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                self.optimizer, T_0=want[0], T_mult=want[1], eta_min=want[2]
            )
            self.scheduler.step(epoch)
        if ck.scaler:
            self.scaler.load_state_dict(ck.scaler)
        self.epoch, self.best = epoch, best
        self.machines = list(dict.fromkeys([*(ck.machines or []), *self.machines]))
        self.metrics = dict(ck.metrics) if ck.metrics is not None else self._empty_metrics()
        states = ck.rng
        if len(states) == self.dist.world_size:
            set_rng_state(states[self.dist.rank])
        else:  # another world size: a fresh, still reproducible stream per rank
            seed_everything(self.cfg.seed + 7919 * self.epoch + self.dist.rank)

    def _save(self, improved: bool) -> None:
        rng = D.all_gather_objects(rng_state(), self.dist)
        if not self.main:
            return
        ck = self.checkpoint(rng)
        save_checkpoint(self.run_dir / "last.pt", ck)
        if improved:
            save_checkpoint(self.run_dir / "best.pt", ck)

    # ---- epochs --------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        return DataLoader(
            self.train_data, batch_size=self.cfg.batch_size, sampler=self.sampler,
            num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda", drop_last=False,
        )

    def train_epoch(self) -> dict[str, float]:
        from tqdm import tqdm

        self.model.train()
        self.sampler.set_epoch(self.epoch)
        self.train_data.set_epoch(self.epoch)
        loader = self._loader()
        n_iter = len(loader)
        sums = np.zeros(4)  # loss * n, correct, spikes, samples
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", disable=not self.progress, leave=False)
        for i, (x, y) in enumerate(bar):
            x = x.to(self.device, non_blocking=True).transpose(0, 1)  # [T, B, 2, H, W]
            y = y.to(self.device, non_blocking=True)
            with self._autocast():
                out = self.model(x)
            rate = out.out.float().mean(0)
            loss = rate_loss(rate, y, self.cfg.loss)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step(self.epoch + (i + 1) / n_iter)
            b = y.shape[0]
            sums += [loss.item() * b, (rate.argmax(1) == y).sum().item(), out.counts.float().sum().item(), b]
            if self.progress:
                bar.set_postfix(
                    loss=f"{sums[0] / sums[3]:.4f}", acc=f"{sums[1] / sums[3]:.3f}",
                    fr=f"{sums[2] / sums[3] / self.energy.total_neurons / self.cfg.timesteps:.4f}",
                )
        loss_sum, correct, spikes, n = D.all_reduce_sum(sums.tolist(), self.dist)
        n = max(n, 1)
        return {
            "samples": int(n),
            "train_loss": loss_sum / n,
            "train_acc": correct / n,
            "train_fr": spikes / n / self.energy.total_neurons / self.cfg.timesteps,
        }

    def _autocast(self) -> torch.autocast:
        if self.use_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp)

    def validate(self) -> Predictions:
        """Every validation clip, recordings sharded over the ranks, gathered on all of them."""
        items = np.flatnonzero(
            np.arange(len(self.val_data)) // self.val_data.clips % self.dist.world_size == self.dist.rank
        )
        part = predict(
            self.net, self.val_data, items, self.cfg.batch_size, self.device, self.use_amp,
            progress=self.progress, desc="validate",
        )
        return Predictions.concat(D.all_gather_objects(part, self.dist))

    def _log(self, row: dict[str, Any]) -> None:
        if self.main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train up to ``cfg.epochs`` epochs (or ``stop_after`` more of them); returns the last log row."""
        cfg = self.cfg
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            (self.run_dir / "command.txt").write_text(self.command + "\n")
            self.train_data.warm(self.progress, "encode train")
            self.val_data.warm(self.progress, "encode val")
        D.barrier(self.dist)
        if not self.main:  # after rank 0 filled the disk cache, if there is one
            self.train_data.warm()
            self.val_data.warm()
        row: dict[str, Any] = {}
        end = cfg.epochs if stop_after is None else min(cfg.epochs, self.epoch + stop_after)
        while self.epoch < end:
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            row = {"epoch": self.epoch + 1, "lr": lr, "world_size": self.dist.world_size, **self.train_epoch()}
            self.epoch += 1
            improved = False
            if self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs:
                p = self.validate()
                clip_acc, vote_acc = accuracies(p)
                nasfr = float(self.energy.nasfr(torch.from_numpy(p.counts).mean(0), cfg.timesteps))
                row.update(val_clip_acc=clip_acc, val_acc=vote_acc, val_nasfr=nasfr)
                self.metrics = {"accuracy": vote_acc, "nasfr": nasfr, "split": cfg.val_split, "data": cfg.data_description}
                improved = vote_acc > self.best
                self.best = max(self.best, vote_acc)
            row["seconds"] = round(time.perf_counter() - t0, 3)
            self._log(row)
            self._save(improved)
            if self.main:
                shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                print(shown, flush=True)
        return row

    def close(self) -> None:
        D.cleanup()


__all__ = [
    "Trainer",
    "binner_for",  # re-exported from training.data_source, where they live
    "frame_dataset",
    "open_source",
    "rate_loss",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]
