"""LightningModules that train the project's own models, and the callback that ships them."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics.regression import MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef

from .. import checkpoints
from .folders import check_writable, replace_directory


def _adamw_with_cosine(module: L.LightningModule, lr: float, weight_decay: float, warmup_steps: int):
    """AdamW whose learning rate rises linearly from lr / warmup_steps to lr over ``warmup_steps`` steps,
    then falls along a cosine to 0 at the trainer's last step (torch's LinearLR, then CosineAnnealingLR)."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(module.trainer.estimated_stepping_batches, warmup_steps + 1)
    schedulers = torch.optim.lr_scheduler
    if warmup_steps > 0:
        warmup = schedulers.LinearLR(optimizer, start_factor=1 / warmup_steps, end_factor=1.0,
                                     total_iters=max(warmup_steps - 1, 1))
        cosine = schedulers.CosineAnnealingLR(optimizer, T_max=total - warmup_steps)
        scheduler = schedulers.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
    else:
        scheduler = schedulers.CosineAnnealingLR(optimizer, T_max=total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class TrainingModule(L.LightningModule):
    """Base of the project's training modules: validation and test both run ``evaluate(batch, batch_idx,
    stage)`` with stage "val" or "test", and the optimiser is :func:`_adamw_with_cosine` with the
    ``lr``, ``weight_decay`` and ``warmup_steps`` hyperparameters."""

    def evaluate(self, batch, batch_idx: int, stage: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, batch_idx, "test")

    def configure_optimizers(self):
        return _adamw_with_cosine(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps)


def exponential_moving_average(module: nn.Module, decay: float, warmup: bool = False) -> AveragedModel:
    """A frozen exponential moving average of ``module``'s parameters: torch's ``AveragedModel`` (the
    averaging behind Lightning's ``EMAWeightAveraging``), starting from ``module``'s current weights.

    Call ``update_parameters(module)`` after each optimizer step: the average moves by ``1 - decay``
    towards the weights. With ``warmup`` the n-th update uses min(decay, (1 + n) / (10 + n)), the
    warm-up of diffusers' ``EMAModel``, so the average forgets the random initialisation within the
    first few hundred steps. The averaged network is ``.module``; it is part of the LightningModule's
    state (resumed with it) and is what :class:`ExportBest` writes.
    """
    def warmed_up(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, num_averaged)

    ema = AveragedModel(module, multi_avg_fn=warmed_up if warmup else get_ema_multi_avg_fn(decay))
    ema.update_parameters(module)  # AveragedModel copies the weights at its first update; averages after
    return ema.requires_grad_(False)


class RegressorTraining(TrainingModule):
    """Trains a one-output network on (input, target) by MSE; reports Pearson and Spearman r on
    validation and test (e.g. a mean-ribosome-load oracle on tokens, or an image reward proxy)."""

    def __init__(self, network: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-2,
                 warmup_steps: int = 100) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        self.metrics = nn.ModuleDict({f"{stage}_{name}": metric() for stage in ("val", "test")
                                      for name, metric in (("pearson", PearsonCorrCoef),
                                                           ("spearman", SpearmanCorrCoef))})

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        tokens, targets = batch
        loss = F.mse_loss(self.network(tokens), targets)
        self.log("train/mse", loss, prog_bar=True)
        return loss

    def evaluate(self, batch, batch_idx: int, stage: str) -> None:
        tokens, targets = batch
        pred = self.network(tokens)
        self.log(f"{stage}/mse", F.mse_loss(pred, targets), batch_size=len(targets), sync_dist=True)
        for name in ("pearson", "spearman"):
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(pred, targets)
            self.log(f"{stage}/{name}", metric, prog_bar=True)


class ExportBest(L.Callback):
    """Writes the trained module (``model`` or ``network`` attribute) as a safe checkpoint directory
    (``config.json`` + ``model.safetensors``) whenever the monitored validation metric improves; a
    LightningModule's ``export_metadata()`` dict, if it has one, joins the metadata.

    The directory is written whole under a temporary name and then renamed, so a reader never sees a
    half-written export. The best score so far is part of the Lightning checkpoint: a run resumed
    with ``--ckpt_path last`` exports only what beats it. Before training, the directory's parent
    must be writable, and a directory that already holds a model is refused unless the run resumes
    or ``overwrite`` is set (the configs export under ``runs/``; a shipped model under ``checkpoints/``
    is updated by copying an export there, on purpose).
    """

    def __init__(self, directory: str, monitor: str, mode: str = "min", overwrite: bool = False) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"ExportBest.mode must be 'min' or 'max', got {mode!r}")
        self.directory, self.monitor, self.mode, self.overwrite = Path(directory), monitor, mode, overwrite
        self.best: float | None = None
        self.seconds_before = 0.0  # training seconds of the runs this one resumes
        self.resumed = False
        self.started = time.time()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(directory=str(self.directory), monitor=self.monitor)

    def state_dict(self) -> dict:
        return {"best": self.best, "train_seconds": self._train_seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")
        self.seconds_before = float(state_dict.get("train_seconds", 0.0))
        self.resumed = True

    def _train_seconds(self) -> float:
        return round(self.seconds_before + time.time() - self.started, 1)

    def check_directory(self, resuming: bool) -> None:
        """One-line errors, before any work, for an export that could not be written or would replace a model."""
        if self.directory.is_file():
            raise ValueError(f"ExportBest.directory {self.directory} is a file; name a folder to export into")
        check_writable(self.directory.parent, "ExportBest.directory's parent")
        if (self.directory / checkpoints.CONFIG).exists() and not (resuming or self.overwrite):
            raise ValueError(f"ExportBest.directory {self.directory} already holds a model: set overwrite: true "
                             f"to replace it (or resume that run with --ckpt_path last), or export elsewhere")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        root = Path(trainer.default_root_dir).resolve()
        if root == self.directory.resolve() or self.directory.resolve() in root.parents:
            raise ValueError(f"ExportBest.directory {self.directory} holds trainer.default_root_dir {trainer.default_root_dir}: "
                             f"an export replaces its folder whole (Lightning's checkpoints with it); name another")
        if stage == "fit" and trainer.is_global_zero:  # whether the run resumes is known once restored
            self.check_directory(resuming=True)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.check_directory(resuming=self.resumed)
        self.started = time.time()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:  # checked on the sanity check already, when there is one
            raise KeyError(f"ExportBest.monitor: {self.monitor!r} is not logged; logged: {sorted(trainer.callback_metrics)}")
        if trainer.sanity_checking:
            return
        value = float(value)
        if self.best is not None and (value >= self.best if self.mode == "min" else value <= self.best):
            return
        self.best = value
        module = getattr(pl_module, "model", None) or getattr(pl_module, "network")
        tmp = self.directory.with_name(f".{self.directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoints.save(module, tmp, metadata={
            self.monitor: value, "epoch": trainer.current_epoch, "global_step": trainer.global_step,
            "train_seconds": self._train_seconds(), "parameters": sum(p.numel() for p in module.parameters()),
            **getattr(pl_module, "export_metadata", dict)(),  # e.g. how a fine-tuned model was made
        })
        replace_directory(tmp, self.directory)


def value_loss(pred: torch.Tensor, reward: torch.Tensor, target: str = "reward", alpha: float = 1.0,
               reward_offset: float = 0.0) -> torch.Tensor:
    """Monte-Carlo regression loss of a value prediction on rollout rewards.

    ``target="reward"``: MSE(f, r), minimised by E[r(x_0) | x_t] (Algorithm 2).
    ``target="exp_reward"``: MSE(exp((f - c) / alpha), exp((r - c) / alpha)), minimised by the soft
    value alpha * log E[exp(r(x_0) / alpha) | x_t]; f stays in reward units and ``c`` (``reward_offset``,
    about the largest reward) keeps the exponentials in range.
    """
    if target == "reward":
        return F.mse_loss(pred, reward)
    if target == "exp_reward":
        return F.mse_loss(torch.exp((pred - reward_offset) / alpha), torch.exp((reward - reward_offset) / alpha))
    raise ValueError(f"ValueRegression.target must be 'reward' or 'exp_reward', got {target!r}")


TARGETS = ("reward", "exp_reward", "soft_q")


class ValueRegression(L.LightningModule):
    """SVDD-MC's value network by Monte-Carlo regression (paper, Algorithm 2).

    Batches are (x_t, t, r(x_0)) from rollouts of the frozen pretrained model; the network
    f(x_t, t) is fitted to r(x_0) by mean squared error. ``warm_start`` initialises the network from
    a checkpoint of the same architecture (e.g. the reward oracle, whose logit is the target at t = 0).
    ``target="exp_reward"`` regresses exp(r / alpha) instead, for the soft value (see :func:`value_loss`);
    ``target="soft_q"`` is soft Q-learning (paper, App. B, Algorithm 5): exp(v(x_t) / alpha) is
    regressed on exp(v'(x_{t+1}) / alpha), v' an EMA copy of the network (``target_decay``) and
    v'(x_0) = r(x_0), so v satisfies the soft Bellman equation v(x_t) = alpha log E[exp(v(x_{t+1}) / alpha)].
    Validation always scores v against the rollouts' r(x_0). Validation reports MSE, Pearson and
    Spearman overall and Pearson per bucket of diffusion time t (``num_buckets`` equal widths).
    """

    def __init__(self, network: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-2,
                 warmup_steps: int = 100, num_buckets: int = 4, warm_start: str | None = None,
                 target: str = "reward", alpha: float = 1.0, reward_offset: float = 0.0,
                 target_decay: float = 0.99) -> None:
        super().__init__()
        if target not in TARGETS or alpha <= 0 or not 0 <= target_decay < 1:
            raise ValueError(f"ValueRegression: target must be one of {TARGETS}, alpha > 0 and target_decay in "
                             f"[0, 1); got {target!r}, {alpha} and {target_decay}")
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        if warm_start is not None:
            counts = checkpoints.warm_start(network, warm_start)
            print(f"value network warm-started from {warm_start}: {counts}")
        # soft Q-learning bootstraps from a slowly moving copy of the network (its EMA)
        self.target_network = exponential_moving_average(network, target_decay) if target == "soft_q" else None
        # float64 states: the merged running moments of DDP ranks then match one process's to rounding
        self.val_mse, self.val_pearson, self.val_spearman = (metric().set_dtype(torch.float64) for metric in
                                                             (MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef))
        self.bucket_pearson = nn.ModuleList(PearsonCorrCoef().set_dtype(torch.float64) for _ in range(num_buckets))
        self.bucket_seen = [False] * num_buckets

    def bucket_names(self) -> list[str]:
        n = self.hparams.num_buckets
        return [f"t{b / n:.2f}-{(b + 1) / n:.2f}" for b in range(n)]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, t, reward = batch[:3]
        hp = self.hparams
        if hp.target == "soft_q":
            loss = value_loss(self.network(x, t), self.bootstrap_target(batch), "exp_reward", hp.alpha,
                              hp.reward_offset)
        else:
            loss = value_loss(self.network(x, t), reward, hp.target, hp.alpha, hp.reward_offset)
        self.log(f"train/loss_{hp.target}", loss, prog_bar=True, batch_size=len(reward))
        return loss

    def train(self, mode: bool = True) -> "ValueRegression":
        """The target network stays in eval mode (no dropout in the bootstrapped targets)."""
        super().train(mode)
        if self.target_network is not None:
            self.target_network.eval()
        return self

    @torch.no_grad()
    def bootstrap_target(self, batch) -> torch.Tensor:
        """Soft Q-learning's target for v(x_t): the target network's value of the next state x_{t+1}
        of the same rollout, or the reward where x_{t+1} is clean (paper, App. B, Algorithm 5)."""
        if len(batch) < 5:
            raise ValueError("ValueRegression target soft_q needs (x_t, t, r, x_next, t_next) batches: "
                             "use RolloutDataModule with source: rollouts")
        _, _, reward, x_next, t_next = batch
        clean = t_next <= 0
        value = self.target_network(x_next, t_next)
        return torch.where(clean, reward, value)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.target_network is not None:
            self.target_network.update_parameters(self.network)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, t, reward = batch[:3]
        pred, reward = self.network(x, t).double(), reward.double()
        for metric in (self.val_mse, self.val_pearson, self.val_spearman):
            metric.update(pred, reward)
        buckets = (t * self.hparams.num_buckets).long().clamp_(0, self.hparams.num_buckets - 1)
        for b, metric in enumerate(self.bucket_pearson):
            rows = buckets == b
            if bool(rows.any()):  # every row counts, so the figure does not depend on how batches fall
                metric.update(pred[rows], reward[rows])
                self.bucket_seen[b] = True

    def on_validation_epoch_start(self) -> None:
        """Starts the metrics empty: Lightning resets logged metrics only when its next loop starts, so a
        module handed back by a spawned fit may still hold the last validation's states."""
        for metric in (self.val_mse, self.val_pearson, self.val_spearman, *self.bucket_pearson):
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        """Logs the metric objects: Lightning computes them over every rank's states (the whole
        validation set under DDP, as with one process) and resets them."""
        self.log_dict({"val/mse": self.val_mse, "val/pearson": self.val_pearson, "val/spearman": self.val_spearman},
                      prog_bar=True)
        seen = torch.tensor(self.bucket_seen, device=self.device)
        if self.trainer.world_size > 1:  # every rank must compute (a collective) the same buckets
            seen = self.all_gather(seen).reshape(-1, len(self.bucket_seen)).any(dim=0)
        for metric, name, bucket_seen in zip(self.bucket_pearson, self.bucket_names(), seen.tolist()):
            if bucket_seen:
                self.log(f"val/pearson_{name}", metric)
        self.bucket_seen = [False] * self.hparams.num_buckets

    def configure_optimizers(self):
        return _adamw_with_cosine(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps)


def __getattr__(name: str):
    from ..renamed import module_getattr

    return module_getattr(__name__, name)
