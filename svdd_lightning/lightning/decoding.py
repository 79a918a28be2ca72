"""Decoding inside ``predict_step``: one item per requested sample, every method per batch.

Each method's results for a batch are handed to ``record_sink`` (the
:class:`~svdd_lightning.lightning.writer.DesignWriter` sets it) as soon as that method finishes the
batch, so a run stopped during a batch keeps the methods that already finished it.

A sample's randomness comes from a generator seeded by (seed, method, sample index) alone, so its
output does not depend on the batch size, the number of processes or a resume point (SMC excepted:
its particles are the batch). A (method, index) already decoded with the same settings in the output
folder is skipped (:class:`~svdd_lightning.lightning.writer.DesignWriter` finds them).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .. import checkpoints
from ..core.decoders import Decoder
from ..core.model import DiffusionModel
from ..core.deadline import CallInterrupted
from ..core.reward import DEFAULT_TIMEOUT, GuardedReward, Reward
from ..core.run import observe_steps
from ..evaluation import SampleMetric, ScoreMetric
from ..seeds import sample_seed  # noqa: F401  (re-exported: it used to live here)
from .fingerprint import describe

PARTS = "parts"


class RewardFailure(ValueError):
    """The reward scored none (or more than ``max_failure_fraction``) of a method's evaluations in a batch:
    a broken reward, not an invalid sample."""


class Terminated(ValueError):
    """The process got SIGTERM (``kill``, ``timeout``, a scheduler's preemption) while decoding.

    Lightning's predict loop only records the signal, so the run checks it after every denoising step
    and stops there; the batches written so far are kept for the resume."""


class DecodingModule(L.LightningModule):
    """Decodes every requested sample with every method and evaluates it.

    Args:
        model: checkpoint directory of the frozen pretrained diffusion model (or the model itself).
        reward: batched callable on decoded samples -> floats (the reward being optimised); in a
            config a :class:`Reward` (``FunctionReward`` wraps a plain function).
        methods: name -> decoder, e.g. pretrained sampling, Best-of-N, SVDD-PM.
        metrics: name -> per-sample evaluation (independent oracle, ELBO), not used for decoding.
        reward_floor: reward given to samples the reward cannot score (it raised or gave NaN); a
            finite number, so that such samples rank below the others instead of being kept.
        seed: base seed; sample i of method m uses a generator seeded from (seed, m, i).
        model_args: constructor arguments of the checkpoint replaced for this run (sampler
            settings such as ``num_steps``), see :func:`svdd_lightning.checkpoints.load`.
        reward_timeout: seconds one reward call (and each sample when a batch is retried one by one) may
            take before it is abandoned and its samples floored (cause ``timeout``); null: no limit. Also
            bounds the evaluation metrics that score samples.
        max_failure_fraction: the run stops, in one line, when more than this fraction of a method's
            reward evaluations in a batch got the floor (whatever the cause); it always stops when all did, unless
            null (never stop: a model expected to give only invalid samples at times, e.g. an untrained one).
    """

    def __init__(self, model: str | DiffusionModel, reward: Reward,
                 methods: dict[str, Decoder], metrics: dict[str, SampleMetric] | None = None,
                 reward_floor: float = 0.0, seed: int = 0, model_args: dict | None = None,
                 reward_timeout: float | None = DEFAULT_TIMEOUT, max_failure_fraction: float | None = 1.0) -> None:
        super().__init__()
        if not methods:
            raise ValueError("model.methods: name at least one decoding method")
        if not math.isfinite(reward_floor):
            raise ValueError(f"model.reward_floor must be a finite number for decoding, got {reward_floor}: "
                             f"a sample the reward cannot score must rank below scored ones (e.g. -10.0)")
        if reward_timeout is not None and not reward_timeout > 0:
            raise ValueError(f"model.reward_timeout must be a positive number of seconds (or null: no limit), "
                             f"got {reward_timeout}")
        if max_failure_fraction is not None and not 0.0 <= max_failure_fraction <= 1.0:
            raise ValueError(f"model.max_failure_fraction must be between 0 and 1 (1: stop only when every "
                             f"evaluation of a batch failed; null: never), got {max_failure_fraction}")
        if model_args and not isinstance(model, str):
            raise ValueError("model.model_args applies to a checkpoint path; set the arguments on the model object")
        self.model = checkpoints.load(model, overrides=model_args) if isinstance(model, str) else model
        self.model.eval().requires_grad_(False)
        self.reward = GuardedReward(reward, floor=reward_floor, timeout=reward_timeout)
        self.max_failure_fraction = max_failure_fraction
        self.methods = methods
        self.metrics = metrics or {}
        for scorer in self._scorers():
            scorer.timeout, scorer.should_stop = reward_timeout, self._sigterm_received
        self.seed = seed
        #: method -> sample indices already decoded with this run's settings (set by DesignWriter)
        self.finished: dict[str, set[int]] = {}
        #: told of every method's batch and denoising step while a DecodeProgress callback runs
        self.progress: Any = None
        #: receives each method's record of a batch as it finishes (set by DesignWriter); without
        #: one, predict_step returns the batch's records together
        self.record_sink: Callable[[dict[str, list]], None] | None = None
        check_rewards(self.model, {"model.reward": self.reward, **{f"model.metrics.{k}": m.reward for k, m in
                                                                    self.metrics.items() if isinstance(m, ScoreMetric)}})

    def method_settings(self, precision: str = "32-true", batch_size: int | None = None,
                        world_size: int = 1) -> dict[str, dict]:
        """Per method, the settings its samples depend on (its fingerprint): the model (config and
        weights), the reward and its floor, the method's own arguments, the seed, the evaluation metrics
        and the precision; for a method whose samples depend on their batch (SMC), also the batch size
        and the number of processes."""
        digests: dict[int, str] = {}
        shared = {"model": describe(self.model, digests), "reward": describe(self.reward.fn, digests),
                  "reward_floor": self.reward.floor, "seed": self.seed,
                  "metrics": describe(self.metrics, digests), "precision": str(precision)}
        settings = {}
        for name, decoder in self.methods.items():
            entry = {**shared, "method": describe(decoder, digests)}
            if decoder.batch_dependent:
                entry["batch"] = {"batch_size": batch_size, "world_size": world_size}
            settings[name] = entry
        return settings

    def train(self, mode: bool = True) -> "DecodingModule":
        """The pretrained model stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def on_predict_start(self) -> None:
        """Rewards, metrics and value networks follow the model to the run's device."""
        for scorer in self._scorers():
            scorer.fn.to(self.device)
        for decoder in self.methods.values():
            decoder.to(self.device)  # its values' networks (e.g. NetworkValue's), also inside refinement

    def _scorers(self) -> list[GuardedReward]:
        """The run's reward and the evaluation metrics that score samples."""
        return [self.reward, *(m.reward for m in self.metrics.values() if isinstance(m, ScoreMetric))]

    def _sigterm_received(self) -> bool:
        return self._trainer is not None and getattr(self._trainer, "received_sigterm", False)

    def _stop_if_terminated(self) -> None:
        if self._sigterm_received():
            raise Terminated("stopped by SIGTERM; every batch a method finished is written: run the same command "
                             "with the same --output_dir to resume")

    def _after_step(self, level: int, num_steps: int) -> None:
        """After every denoising step: stop on SIGTERM, else move the progress display."""
        self._stop_if_terminated()
        if self.progress is not None:
            self.progress.step(level, num_steps)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, list]:
        """Decode the batch's unfinished samples with every method. Each method's record (its rows and
        compute statistics) goes to ``record_sink`` when the method is done; the records not handed
        over are returned."""
        self._stop_if_terminated()
        indices = [i for i, spare in zip(batch["index"].tolist(), batch["spare"].tolist()) if not spare]
        kept: dict[str, list] = {"rows": [], "stats": []}
        for name, decoder in self.methods.items():
            todo = [i for i in indices if i not in self.finished.get(name, ())]
            if not todo:  # every index of the batch is done for this method (or a rank's placeholder item)
                continue
            record = self._decode(name, decoder, todo)
            if self.record_sink is not None:
                self.record_sink(record)
            else:
                kept["rows"] += record["rows"]
                kept["stats"] += record["stats"]
        return kept

    def _decode(self, name: str, decoder: Decoder, todo: list[int]) -> dict[str, list]:
        """One method on the sample indices ``todo``: its rows (sample, reward, evaluations) and statistics."""
        start = time.perf_counter()
        generators = [torch.Generator().manual_seed(sample_seed(self.seed, name, i)) for i in todo]
        progress = self.progress
        if progress is not None:
            progress.method_start(name, len(todo))
        try:
            with observe_steps(self._after_step):
                result = decoder.sample(self.model, self.reward, generators, todo)
            self._check_failure_budget(name, result.stats.reward_calls, result.stats.reward_failures,
                                       result.reward_failure_causes, result.last_reward_error)
            columns = {key: metric(self.model, result.x0, result.samples).tolist()
                       for key, metric in self.metrics.items()}
        except CallInterrupted:  # SIGTERM while a reward was scoring
            self._stop_if_terminated()
            raise
        seconds = time.perf_counter() - start
        rows = [{"method": name, "index": index, "sample": result.samples[j], "reward": float(result.rewards[j]),
                 **{k: v[j] for k, v in columns.items()}} for j, index in enumerate(todo)]
        if progress is not None:
            progress.method_done()
        return {"rows": rows, "stats": [{"method": name, "n": len(todo), "seconds": seconds, **vars(result.stats),
                                         "reward_failure_causes": result.reward_failure_causes}]}

    def _check_failure_budget(self, method: str, calls: int, failures: int, causes: dict[str, int],
                              last_error: str | None) -> None:
        """Stop when the reward scored none of the batch's evaluations, or more than the budget failed."""
        if (not calls or self.max_failure_fraction is None
                or (failures < calls and failures <= self.max_failure_fraction * calls)):
            return
        counted = ", ".join(f"{n} {cause}" for cause, n in causes.items())
        what = (f"scored none of {calls} evaluations" if failures == calls else
                f"could not score {failures} of {calls} evaluations (more than model.max_failure_fraction="
                f"{self.max_failure_fraction:g})")
        raise RewardFailure(f"reward {self.reward.name} {what} in a batch of {method} ({counted}; last error: "
                            f"{last_error}); check that it accepts this model's samples. Results "
                            f"written so far are kept")


def check_rewards(model: DiffusionModel, scorers: dict[str, GuardedReward]) -> None:
    """Refuse, before any work, a reward or metric that cannot read the model's samples
    (:meth:`Reward.check_model`), in one line naming its field."""
    for field, scorer in scorers.items():
        try:
            scorer.fn.check_model(model)
        except ValueError as err:
            raise ValueError(f"{field}: {err}") from None


class _Indices(Dataset):
    """Sample indices to decode; ``spare`` ones are finished samples that only keep a rank busy."""

    def __init__(self, indices: list[int], spare: int = 0) -> None:
        self.indices, self.first_spare = indices, len(indices) - spare

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, int | bool]:
        return {"index": self.indices[i], "spare": i >= self.first_spare}


class SampleIndexDataModule(L.LightningDataModule):
    """Predict data: the sample indices 0 .. num_samples-1 that some method has still to decode.

    Which (method, index) are done comes from the :class:`DecodingModule` (``finished``, set by the
    writer from the output folder). Lightning shards the indices across processes without repeats;
    each batch carries its indices. ``output_dir``, when given, must be the writer's.
    """

    def __init__(self, num_samples: int = 256, batch_size: int = 32, output_dir: str | None = None) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"data.num_samples must be >= 1, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.num_samples, self.batch_size, self.output_dir = num_samples, batch_size, output_dir

    def predict_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module if self.trainer is not None else None
        finished = getattr(module, "finished", {})
        methods = list(getattr(module, "methods", {}))
        todo = [i for i in range(self.num_samples) if not methods or any(i not in finished.get(m, ()) for m in methods)]
        world = self.trainer.world_size if self.trainer is not None else 1
        spare = max(world - len(todo), 0)
        if spare:
            # Every rank needs an item: Lightning's predict sampler asserts it, and with no batch at all
            # the predict loop is skipped and the writer never merges. Spare items are finished samples
            # that predict_step skips (re-decoding one could change it: SMC's particles are the batch).
            finished_all = [i for i in range(self.num_samples) if i not in todo] or todo
            todo += [finished_all[k % len(finished_all)] for k in range(spare)]
        return DataLoader(_Indices(todo, spare), batch_size=self.batch_size, shuffle=False)
