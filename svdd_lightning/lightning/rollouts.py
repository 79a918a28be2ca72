"""Training data for SVDD-MC's value network: (x_t, t, r(x_0)) pairs (paper, Algorithm 2).

A *rollout* is one run of the frozen pretrained chain from noise (level 0) to a clean sample x_0;
``levels_per_rollout`` of its intermediate states x_t are kept, each paired with the rollout's
reward r(x_0). Remark 1's cheaper alternative noises given clean samples with q(x_t | x_0) instead.

Rollout i draws everything (its chain and its kept levels) from a generator seeded by
(seed, source, i) alone, so the data of rollout i do not depend on batching, sharding or the number
of processes. States are tensors or dicts of tensors (a graph's features, adjacency and mask); shard
files store a dict state's leaves as ``<key>.<leaf>``.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from .. import checkpoints
from ..core.steps import ancestral
from ..core.model import DiffusionModel
from ..core.reward import GuardedReward, Reward, RewardCallable, guard
from ..core.run import Run
from ..core.state import State, batch_size, concat_rows, index_rows
from ..paths import find
from ..sample_files import read_fasta
from ..seeds import sample_seed
from .folders import atomic_write

SOURCES = ("rollouts", "forward_noising")
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
FORMAT = 2  # 2: shards of the rollouts source also hold each state's successor (x_next, t_next)
BATCH_KEYS = ("x", "t", "reward", "x_next", "t_next")


def _generators(seed: int, source: str, indices: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(sample_seed(seed, source, i)) for i in indices]


def _draw_levels(num_steps: int, generators: Sequence[torch.Generator], levels_per_rollout: int) -> Tensor:
    """(B, levels_per_rollout) distinct levels from 1 .. num_steps-1 per row, ascending, from the row's generator."""
    if not 1 <= levels_per_rollout <= num_steps - 1:
        raise ValueError(f"levels_per_rollout must be in 1..{num_steps - 1} (the model's intermediate levels), "
                         f"got {levels_per_rollout}")
    return torch.stack([(torch.randperm(num_steps - 1, generator=g)[:levels_per_rollout] + 1).sort().values
                        for g in generators])


def _order(model: DiffusionModel, parts: list[tuple[int, Tensor, State]]) -> tuple[Tensor, Tensor, State]:
    """Rows, levels and states of ``(level, rows, states)`` parts, ordered by rollout then level."""
    rows = torch.cat([r for _, r, _ in parts])
    level = torch.cat([torch.full_like(r, k) for k, r, _ in parts])
    order = torch.argsort(rows * (model.num_steps + 1) + level)
    return rows[order], level[order], index_rows(concat_rows([s for _, _, s in parts]), order)


def _flatten(model: DiffusionModel, parts: list[tuple[int, Tensor, State]], rewards: Tensor,
             indices: Sequence[int], successors: list[tuple[int, Tensor, State]] | None = None) -> dict[str, Tensor]:
    """Pairs from ``(level, rows, states)`` parts; ``successors`` holds, under the same (level, row)
    keys, each kept state's next state x_{k+1} (for soft Q-learning)."""
    rows, level, x = _order(model, parts)
    data = {
        "x": x,
        "t": torch.tensor([model.time(k) for k in level.tolist()], dtype=torch.float32),
        "level": level,
        "reward": rewards.float()[rows],
        "rollout": torch.tensor(list(indices), dtype=torch.long)[rows],
    }
    if successors is not None:
        data["x_next"] = _order(model, successors)[2]
        data["t_next"] = torch.tensor([model.time(k + 1) for k in level.tolist()], dtype=torch.float32)
    return data


@torch.no_grad()
def generate_rollouts(model: DiffusionModel, reward: Reward | RewardCallable, indices: Sequence[int], seed: int,
                      levels_per_rollout: int, chunk_size: int | None = None) -> dict[str, Tensor]:
    """Roll out the frozen model once per index and keep ``levels_per_rollout`` states of each.

    Returns flat tensors over the P = len(indices) * levels_per_rollout pairs: ``x`` (P, ...) the kept
    states (on CPU), ``t`` (P,) = model.time(level), ``level`` (P,), ``reward`` (P,) the rollout's
    floored r(x_0), ``rollout`` (P,) its index, and ``x_next``, ``t_next`` the state one step later
    (x_0 after the last step), for soft Q-learning. Level 0 (the prior) and the clean level are never
    kept.
    """
    generators = _generators(seed, "rollout", indices)
    levels = _draw_levels(model.num_steps, generators, levels_per_rollout)
    parts: list[tuple[int, Tensor, State]] = []
    successors: list[tuple[int, Tensor, State]] = []

    def keep(level: int, x: State, into: list, kept_level: int) -> None:
        rows = (levels == kept_level).any(dim=1).nonzero().squeeze(1)
        if rows.numel():
            into.append((kept_level, rows, _to_cpu(index_rows(x, rows))))

    def on_level(level: int, x: State) -> None:
        keep(level, x, parts, level)
        keep(level, x, successors, level - 1)  # x_k is the successor of a state kept at level k - 1

    run = Run(model, guard(reward), indices, chunk_size)
    x0 = ancestral(run, run.initial_state(generators), generators, on_level=on_level)
    keep(model.num_steps, x0, successors, model.num_steps - 1)
    return _flatten(model, parts, run.score(x0).cpu(), indices, successors)


@torch.no_grad()
def forward_noised_pairs(model: DiffusionModel, reward: Reward | RewardCallable, samples_x0: State, indices: Sequence[int],
                         seed: int, levels_per_rollout: int) -> dict[str, Tensor]:
    """Remark 1: pairs (x_t ~ q(x_t | x_0), t, r(x_0)) from given clean states, row j being sample ``indices[j]``.

    Levels are drawn as in :func:`generate_rollouts`; the result has the same keys.
    """
    if len(indices) != batch_size(samples_x0):
        raise ValueError(f"forward_noised_pairs: {batch_size(samples_x0)} samples for {len(indices)} indices")
    generators = _generators(seed, "forward_noising", indices)
    levels = _draw_levels(model.num_steps, generators, levels_per_rollout)
    parts = []
    for level in levels.unique().tolist():
        rows = (levels == level).any(dim=1).nonzero().squeeze(1)
        noised = model.forward_noise(index_rows(samples_x0, rows), level, [generators[b] for b in rows.tolist()])
        parts.append((level, rows, _to_cpu(noised)))
    rewards = guard(reward)(model.decode(samples_x0))
    return _flatten(model, parts, rewards, indices)


def _to_cpu(x: State) -> State:
    return tree_map(lambda t: t.detach().cpu(), x)


class RolloutDataModule(L.LightningDataModule):
    """(x_t, t, r(x_0)) batches for :class:`~svdd_lightning.lightning.training.ValueRegression`, followed
    by (x_{t+1}, t_{t+1}) for the rollouts source (used by soft Q-learning).

    Training uses rollouts 0 .. num_rollouts-1, validation the held-out rollouts num_rollouts ..
    num_rollouts+val_rollouts-1; both are cut into shards of ``shard_size`` rollouts. Under DDP the
    shards are spread by :func:`spread` for any number of processes: each rollout is used once per
    epoch by exactly one rank, and every rank serves the same number of batches (:class:`EvenBatches`:
    a rank with fewer pairs gets some smaller batches, nothing is repeated or dropped). With one
    process the batches are those of a plain ``DataLoader(batch_size, shuffle)``. Configs must set
    ``trainer.use_distributed_sampler: false`` (Lightning's sampler would shard the rank's data a
    second time).

    Args:
        model: checkpoint directory of the frozen pretrained diffusion model, or the model itself
            (any :class:`~svdd_lightning.DiffusionModel`; in a config a ``class_path``); it is kept
            frozen in eval mode and moved to the trainer's device.
        reward: batched reward on decoded samples.
        num_rollouts: training rollouts, a multiple of ``shard_size``.
        val_rollouts: held-out validation rollouts, a multiple of ``shard_size``.
        levels_per_rollout: states kept per rollout, distinct levels from 1 .. num_steps-1.
        shard_size: rollouts per shard (the unit of generation, caching and DDP partition).
        cache_dir: where shards are stored as ``<train|val>-<k:05d>.safetensors`` and reused;
            without it shards are generated in memory at every setup.
        seed: rollout i uses a generator seeded from (seed, source, i) alone.
        batch_size: pairs per batch.
        reward_floor: reward of samples the reward cannot score.
        source: ``rollouts`` (Algorithm 2) or ``forward_noising`` (Remark 1: noise the clean
            sequences of ``samples`` with q(x_t | x_0); sample i plays the part of rollout i).
        samples: FASTA file of clean sequences, for ``source: forward_noising``.
        chunk_size: at most this many rows per denoiser call during rollouts.
        model_args: constructor arguments of the checkpoint replaced for the rollouts (e.g.
            ``num_steps``: roll out the chain the decoder will run); only with a checkpoint path.
    """

    def __init__(self, model: str | DiffusionModel, reward: Reward, num_rollouts: int = 4096, val_rollouts: int = 512,
                 levels_per_rollout: int = 16, shard_size: int = 256, cache_dir: str | None = None, seed: int = 0,
                 batch_size: int = 256, reward_floor: float = 0.0, source: str = "rollouts",
                 samples: str | None = None, chunk_size: int | None = None, model_args: dict | None = None) -> None:
        super().__init__()
        if shard_size < 1 or batch_size < 1:
            raise ValueError(f"data.shard_size and data.batch_size must be >= 1, got {shard_size} and {batch_size}")
        for name, n in (("num_rollouts", num_rollouts), ("val_rollouts", val_rollouts)):
            if n < 1 or n % shard_size:
                raise ValueError(f"data.{name} must be a positive multiple of data.shard_size={shard_size}, got {n}")
        if source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
        if (source == "forward_noising") != (samples is not None):
            raise ValueError("data.samples (a FASTA file) is required with data.source: forward_noising, "
                             "and only then")
        if model_args and not isinstance(model, str):
            raise ValueError("data.model_args applies to a checkpoint path; set the arguments on the model object")
        self.model = model
        self.reward = GuardedReward(reward, floor=reward_floor)
        self.num_rollouts, self.val_rollouts = num_rollouts, val_rollouts
        self.levels_per_rollout, self.shard_size = levels_per_rollout, shard_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.seed, self.batch_size, self.source, self.samples = seed, batch_size, source, samples
        self.chunk_size, self.model_args = chunk_size, model_args
        self.pretrained: DiffusionModel | None = None
        self._clean: Tensor | None = None
        self._data: dict[str, dict[str, Tensor]] = {}

    # --- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load the frozen model, then generate or load this rank's shards of the stage's splits."""
        rank, world_size = self._rank_and_world()
        self._load_pretrained()
        splits = {"fit": SPLITS, "validate": ("val",)}.get(stage, ())
        for split in splits:
            if split not in self._data:
                self._data[split] = self.split_data(split, rank, world_size)

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_and_world()
        generator = torch.Generator().manual_seed(sample_seed(self.seed, "shuffle", rank))
        dataset = self._dataset("train")
        batches = EvenBatches(RandomSampler(dataset, generator=generator), self.batch_size,
                              self.num_batches("train", world_size))
        return DataLoader(dataset, batch_sampler=batches, generator=generator)

    def val_dataloader(self) -> DataLoader:
        _, world_size = self._rank_and_world()
        dataset = self._dataset("val")
        batches = EvenBatches(SequentialSampler(dataset), self.batch_size, self.num_batches("val", world_size))
        return DataLoader(dataset, batch_sampler=batches)

    # --- shards -----------------------------------------------------------------------------------
    def num_shards(self, split: str) -> int:
        return (self.num_rollouts if split == "train" else self.val_rollouts) // self.shard_size

    def shard_indices(self, split: str, shard: int) -> list[int]:
        """Rollout indices of one shard; validation rollouts come after the training ones."""
        start = (0 if split == "train" else self.num_rollouts) + shard * self.shard_size
        return list(range(start, start + self.shard_size))

    def rank_pairs(self, split: str, rank: int, world_size: int) -> int:
        """How many pairs of the split ``rank`` serves (``levels_per_rollout`` per rollout)."""
        shards, rest = spread(self.num_shards(split), self.shard_size, rank, world_size)
        return (len(shards) * self.shard_size + len(rest)) * self.levels_per_rollout

    def num_batches(self, split: str, world_size: int) -> int:
        """Batches per rank: those of the rank with the most pairs."""
        return max(-(-self.rank_pairs(split, r, world_size) // self.batch_size) for r in range(world_size))

    def split_data(self, split: str, rank: int = 0, world_size: int = 1) -> dict[str, State]:
        """The pairs of ``rank``'s part of the split (see :func:`spread`), its whole shards first."""
        for name in SPLITS:
            fewest, batches = min(self.rank_pairs(name, r, world_size) for r in range(world_size)), \
                self.num_batches(name, world_size)
            if fewest < batches:
                field = "num_rollouts" if name == "train" else "val_rollouts"
                raise ValueError(f"data.{field}: a rank gets {fewest} {name} pairs for the {batches} batches "
                                 f"every rank must run on {world_size} processes; raise data.{field} or "
                                 f"data.batch_size")
        if self.cache_dir is not None:
            self._check_manifest()
        shards, rest = spread(self.num_shards(split), self.shard_size, rank, world_size)
        parts = [self._shard(split, k) for k in shards]
        first = 0 if split == "train" else self.num_rollouts
        for k in range(rest.start // self.shard_size, -(-rest.stop // self.shard_size)) if rest else ():
            data = self._shard(split, k)
            position = data["rollout"] - first
            rows = ((position >= rest.start) & (position < rest.stop)).nonzero().squeeze(1)
            parts.append({key: index_rows(value, rows) for key, value in data.items()})
        return {key: concat_rows([p[key] for p in parts]) for key in parts[0]}

    def _shard(self, split: str, k: int) -> dict[str, Tensor]:
        path = self.cache_dir / f"{split}-{k:05d}.safetensors" if self.cache_dir is not None else None
        if path is not None and path.is_file():
            return _unflatten(load_file(str(path)))
        start = time.perf_counter()
        indices = self.shard_indices(split, k)
        model = self._load_pretrained()
        if self.source == "rollouts":
            data = generate_rollouts(model, self.reward, indices, self.seed, self.levels_per_rollout, self.chunk_size)
        else:
            clean = self._clean_samples()[indices[0]: indices[-1] + 1]
            data = forward_noised_pairs(model, self.reward, clean, indices, self.seed, self.levels_per_rollout)
        if path is not None:
            atomic_write(path, lambda tmp: save_file(_flatten_leaves(data), str(tmp)))
        seconds = max(time.perf_counter() - start, 1e-9)
        print(f"{self.source}: {split} shard {k} ({len(indices)} rollouts, {len(data['t'])} pairs) in {seconds:.1f} s, "
              f"{len(indices) / seconds:.1f} rollouts/s", file=sys.stderr, flush=True)
        return data

    def _dataset(self, split: str) -> "PairDataset":
        if split not in self._data:
            raise RuntimeError(f"RolloutDataModule: the {split} data are not set up; call setup() first")
        data = self._data[split]
        return PairDataset([data[key] for key in BATCH_KEYS if key in data])

    # --- helpers ----------------------------------------------------------------------------------
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        if trainer.world_size > 1 and getattr(trainer._accelerator_connector, "use_distributed_sampler", False):
            raise ValueError("RolloutDataModule shards the data itself: set trainer.use_distributed_sampler: false")
        return trainer.global_rank, trainer.world_size

    def _load_pretrained(self) -> DiffusionModel:
        """The frozen model, in eval mode without gradients, on the trainer's device (CPU without one).

        The reward's networks follow it to that device (:meth:`Reward.to`).
        """
        if self.pretrained is None:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            if isinstance(self.model, str):
                self.pretrained = checkpoints.load(self.model, map_location=device, overrides=self.model_args)
            else:
                self.pretrained = self.model.to(device)
            self.pretrained.eval().requires_grad_(False)
            self.reward.fn.to(device)
        return self.pretrained

    def _clean_samples(self) -> Tensor:
        """The FASTA's sequences as clean states (forward_noising source)."""
        if self._clean is None:
            model = self._load_pretrained()
            sequences = read_fasta(self.samples)
            needed = self.num_rollouts + self.val_rollouts
            if len(sequences) < needed:
                raise ValueError(f"data.samples: {self.samples} has {len(sequences)} sequences; num_rollouts + "
                                 f"val_rollouts = {needed} are needed")
            encode = getattr(model, "encode", None)
            if encode is None:
                raise TypeError(f"data.source forward_noising: {type(model).__name__} has no encode(sequences)")
            self._clean = encode(sequences[:needed]).cpu()
        return self._clean

    def _manifest(self) -> dict:
        return {"format": FORMAT, "seed": self.seed, "levels_per_rollout": self.levels_per_rollout, "shard_size": self.shard_size,
                "num_rollouts": self.num_rollouts, "source": self.source,
                "model": _model_identity(self.model), "model_args": self.model_args,
                "samples": None if self.samples is None else str(Path(self.samples).resolve()),
                "reward": self.reward.name, "reward_floor": self.reward.floor}

    def _check_manifest(self) -> None:
        """Write the cache's manifest, or check that the cache was made with the same settings."""
        path, expected = self.cache_dir / MANIFEST, self._manifest()
        if path.is_file():
            found = json.loads(path.read_text())
            changed = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
            if changed:
                diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
                raise ValueError(f"data.cache_dir {self.cache_dir} holds rollouts made with other settings ({diff}); "
                                 f"use a new cache_dir")
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(expected, indent=2, sort_keys=True) + "\n")


def spread(num_shards: int, shard_size: int, rank: int, world_size: int) -> tuple[list[int], range]:
    """``rank``'s part of a split of ``num_shards`` shards: the whole shards k < K with
    k % world_size == rank (K the largest multiple of world_size not above num_shards), and a slice of
    rollout positions (0-based within the split) of the last num_shards - K shards, cut so that the
    ranks' rollout counts differ by at most one. Every rollout goes to exactly one rank; with one
    process (or shard counts that divide by world_size) ranks get whole shards only. A rank loads the
    shared shards it has rollouts of whole and keeps its rows, so those few shards may be generated by
    more than one rank (each rank still uses only its own rollouts)."""
    whole = num_shards - num_shards % world_size
    shared = (num_shards - whole) * shard_size
    offset = whole * shard_size
    return (list(range(rank, whole, world_size)),
            range(offset + rank * shared // world_size, offset + (rank + 1) * shared // world_size))


class EvenBatches(Sampler[list[int]]):
    """Exactly ``num_batches`` batches of at most ``batch_size`` indices of ``sampler``, every index
    once: full batches while the indices left can still give each remaining batch one, then smaller
    ones. With num_batches = ceil(n / batch_size) these are ``BatchSampler(drop_last=False)``'s batches,
    so a rank with fewer pairs runs as many steps as the others (DDP needs that) without repeats."""

    def __init__(self, sampler: Sampler[int], batch_size: int, num_batches: int) -> None:
        if not 1 <= num_batches <= len(sampler):
            raise ValueError(f"EvenBatches: {len(sampler)} indices cannot fill {num_batches} batches")
        self.sampler, self.batch_size, self.num_batches = sampler, batch_size, num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        indices = list(self.sampler)
        start = 0
        for left in range(self.num_batches, 0, -1):
            size = min(self.batch_size, len(indices) - start - (left - 1))
            yield indices[start:start + size]
            start += size


def _model_identity(model: str | DiffusionModel) -> str:
    """What a rollout cache records of its model: the checkpoint's resolved path, or the class of a model
    object with a digest of its weights (a cache made with other weights is then refused)."""
    if isinstance(model, str):
        return str(find(model).resolve())
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return f"{type(model).__module__}.{type(model).__qualname__}:{digest.hexdigest()}"


class PairDataset(Dataset):
    """Rows of aligned fields (tensors or dicts of tensors), one tuple of fields per pair."""

    def __init__(self, fields: list[State]) -> None:
        self.fields = fields

    def __len__(self) -> int:
        return batch_size(self.fields[0])

    def __getitem__(self, i: int) -> tuple:
        return tuple(tree_map(lambda t: t[i], f) for f in self.fields)


def _flatten_leaves(data: dict[str, State]) -> dict[str, Tensor]:
    """Shard tensors by name; the leaves of a dict state ``x`` become ``x.<leaf>``."""
    flat = {}
    for key, value in data.items():
        leaves = value.items() if isinstance(value, dict) else [(None, value)]
        flat.update({key if leaf is None else f"{key}.{leaf}": t.contiguous() for leaf, t in leaves})
    return flat


def _unflatten(flat: dict[str, Tensor]) -> dict[str, State]:
    data: dict[str, State] = {}
    for name, t in flat.items():
        key, _, leaf = name.partition(".")
        if leaf:
            data.setdefault(key, {})[leaf] = t
        else:
            data[key] = t
    return data

