"""Decoding inside ``predict_step``: one item per requested sample, every method per batch.

A sample's randomness comes from a generator seeded by (seed, method, sample index) alone, so its
output does not depend on the batch size, the number of processes or a resume point (SMC excepted:
its particles are the batch).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .. import checkpoints
from ..core.decoders import Decoder
from ..core.model import DiffusionModel
from ..core.reward import Reward, RewardFunction
from ..evaluation import SampleMetric, ScoreMetric

from ..seeds import sample_seed  # noqa: F401  (re-exported: it used to live here)

PARTS = "parts"


class DecodingModule(L.LightningModule):
    """Decodes every requested sample with every method and evaluates it.

    Args:
        model: checkpoint directory of the frozen pretrained diffusion model (or the model itself).
        reward: batched callable on decoded samples -> floats (the reward being optimised); in a
            config a :class:`RewardFunction` (``FunctionReward`` wraps a plain function).
        methods: name -> decoder, e.g. pretrained sampling, Best-of-N, SVDD-PM.
        metrics: name -> per-sample evaluation (independent oracle, ELBO), not used for decoding.
        reward_floor: reward given to samples the reward cannot score (it raised or gave NaN).
        seed: base seed; sample i of method m uses a generator seeded from (seed, m, i).
        model_args: constructor arguments of the checkpoint replaced for this run (sampler
            settings such as ``num_steps``), see :func:`svdd_lightning.checkpoints.load`.
    """

    def __init__(self, model: str | DiffusionModel, reward: RewardFunction,
                 methods: dict[str, Decoder], metrics: dict[str, SampleMetric] | None = None,
                 reward_floor: float = 0.0, seed: int = 0, model_args: dict | None = None) -> None:
        super().__init__()
        if not methods:
            raise ValueError("model.methods: name at least one decoding method")
        if model_args and not isinstance(model, str):
            raise ValueError("model.model_args applies to a checkpoint path; set the arguments on the model object")
        self.model = checkpoints.load(model, overrides=model_args) if isinstance(model, str) else model
        self.model.eval().requires_grad_(False)
        self.reward = Reward(reward, floor=reward_floor)
        self.methods = methods
        self.metrics = metrics or {}
        self.seed = seed

    def train(self, mode: bool = True) -> "DecodingModule":
        """The pretrained model stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def on_predict_start(self) -> None:
        """Rewards, metrics and value networks follow the model to the run's device."""
        scorers = [self.reward, *(m.fn for m in self.metrics.values() if isinstance(m, ScoreMetric))]
        for scorer in scorers:
            if callable(getattr(scorer.fn, "to", None)):
                scorer.fn.to(self.device)
        for decoder in self.methods.values():
            value = getattr(decoder, "value", None)
            if callable(getattr(value, "to", None)):  # e.g. NetworkValue's network
                value.to(self.device)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, list]:
        indices = [i for i, spare in zip(batch["index"].tolist(), batch["spare"].tolist()) if not spare]
        rows, stats = [], []
        if not indices:  # a rank's placeholder item when every sample is already decoded
            return {"rows": rows, "stats": stats}
        for name, decoder in self.methods.items():
            start = time.perf_counter()
            generators = [torch.Generator().manual_seed(sample_seed(self.seed, name, i)) for i in indices]
            result = decoder.sample(self.model, self.reward, generators, indices)
            columns = {key: metric(self.model, result.x0, result.samples).tolist()
                       for key, metric in self.metrics.items()}
            seconds = time.perf_counter() - start
            for j, index in enumerate(indices):
                rows.append({"method": name, "index": index, "sample": result.samples[j],
                             "reward": float(result.rewards[j]), **{k: v[j] for k, v in columns.items()}})
            stats.append({"method": name, "n": len(indices), "seconds": seconds, **vars(result.stats)})
        return {"rows": rows, "stats": stats}


class _Indices(Dataset):
    """Sample indices to decode; ``spare`` ones are finished samples that only keep a rank busy."""

    def __init__(self, indices: list[int], spare: int = 0) -> None:
        self.indices, self.first_spare = indices, len(indices) - spare

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, int | bool]:
        return {"index": self.indices[i], "spare": i >= self.first_spare}


def finished_indices(output_dir: str | Path) -> set[int]:
    """Sample indices whose results are already written under ``output_dir`` (for resuming)."""
    done: set[int] = set()
    for part in sorted((Path(output_dir) / PARTS).glob("*.jsonl")):
        for line in part.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: that batch is redone
                continue
            done.update(r["index"] for r in record["rows"])
    return done


class SampleIndexDataModule(L.LightningDataModule):
    """Predict data: the sample indices 0 .. num_samples-1 still missing from ``output_dir``.

    Lightning shards the indices across processes without repeats; each batch carries its indices.
    """

    def __init__(self, num_samples: int = 256, batch_size: int = 32, output_dir: str | None = None) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"data.num_samples must be >= 1, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.num_samples, self.batch_size, self.output_dir = num_samples, batch_size, output_dir

    def predict_dataloader(self) -> DataLoader:
        done = finished_indices(self.output_dir) if self.output_dir else set()
        todo = [i for i in range(self.num_samples) if i not in done]
        world = self.trainer.world_size if self.trainer is not None else 1
        spare = max(world - len(todo), 0)
        if spare:
            # Every rank needs an item: Lightning's predict sampler asserts it, and with no batch at all
            # the predict loop is skipped and the writer never merges. Spare items are finished samples
            # that predict_step skips (re-decoding one could change it: SMC's particles are the batch).
            finished = [i for i in range(self.num_samples) if i not in todo] or todo
            todo += [finished[k % len(finished)] for k in range(spare)]
        return DataLoader(_Indices(todo, spare), batch_size=self.batch_size, shuffle=False)
