"""Fine-tuning a pretrained diffusion model on guided samples: amortising the search.

SVDD pays M times pretrained sampling's cost every time it is used. Li et al. (2024, Section 5.3)
point to the way out: decode designs with the guided sampler once, then fine-tune the pretrained
model on them with its own pretraining loss, so that plain sampling from the fine-tuned model (1x
cost) gives what the search gave. Done in rounds, each round's model proposing for the next
round's search, this is expert iteration (:mod:`svdd_lightning.lightning.expert_iteration`).

- :class:`GuidedSamplesDataModule`: the fine-tuning set, read from a ``decode.py predict`` run (one of
  its methods) or generated with a configured decoder into a cache directory in decode.py's own
  output format (resumable; sample i depends on (seed, method, i) alone, as in decode.py). Each row
  carries a weight proportional to exp(r / alpha) over the set (uniform without ``alpha``).
  Original training data (any DataModule) can be mixed into every batch.
- :class:`GuidedFineTuning`: the model's pretraining loss on the weighted guided samples, anchored
  to the pretrained model by ``data_weight`` x the loss on original training data and ``kl_weight``
  x the KL of the model's predictions from the frozen reference model's.
- :class:`~svdd_lightning.core.objective.FineTuningObjective`: what the module needs from a model family,
  supplied by the model (``finetuning_objective()``; masked diffusion: its NELBO and KL rate).
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric

from .. import checkpoints
from ..core.decoders import Decoder
from ..core.model import DiffusionModel
from ..core.objective import FineTuningObjective
from ..core.reward import Reward
from ..paths import find
from ..sample_files import sample_files_for
from .training import _adamw_with_cosine

# decode.py's modules (decoding, writer) are imported where used: importing them here would list the
# decoding LightningModule among train.py's training modules

SAMPLES_CSV = "samples.csv"


def objective_for(model: DiffusionModel) -> FineTuningObjective:
    """The fine-tuning objective the model supplies (:meth:`DiffusionModel.finetuning_objective`)."""
    objective = model.finetuning_objective()
    if objective is None:
        raise TypeError(f"GuidedFineTuning: {type(model).__name__} supplies no fine-tuning objective (its "
                        f"finetuning_objective() gives None); pass model.objective (a FineTuningObjective)")
    return objective


# --- the LightningModule -----------------------------------------------------------------------------
class GuidedFineTuning(L.LightningModule):
    """Fine-tunes a diffusion model from its checkpoint on guided samples, anchored to a reference.

    The loss of a batch is ``mean(w * loss(x_guided)) + kl_weight * mean(w * KL(model || reference))
    + data_weight * mean(loss(x_data))``: ``loss`` is the model's own pretraining loss (for masked
    diffusion the NELBO in bits per token), ``w`` the rows' weights (exp(r / alpha) normalised to
    mean 1, or 1), ``x_data`` a batch of the original training data when the DataModule mixes it in.
    Validation logs the same terms on held-out guided samples and held-out original data, and their
    sum ``val/loss`` (the objective; ``ExportBest`` can monitor it). ``model`` is what ``ExportBest``
    exports: a checkpoint that ``decode.py`` loads like any other.

    Args:
        model: checkpoint directory to start from (the pretrained model, or an earlier round's export).
        reference: checkpoint of the frozen anchor model (default: ``model``); iterated rounds keep
            the original pretrained model here.
        kl_weight: strength of the KL anchor (0: none; the KL is still logged).
        data_weight: strength of the original-data anchor (used when the DataModule mixes data in).
        objective: the model family's losses (default: the model's own, ``model.finetuning_objective()``).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up and cosine decay, as in pretraining.
    """

    def __init__(self, model: str, reference: str | None = None, kl_weight: float = 0.0, data_weight: float = 0.0,
                 objective: FineTuningObjective | None = None, lr: float = 2e-4, weight_decay: float = 0.0,
                 warmup_steps: int = 20) -> None:
        super().__init__()
        if kl_weight < 0 or data_weight < 0:
            raise ValueError(f"model.kl_weight and model.data_weight must be >= 0, got {kl_weight} and {data_weight}")
        self.save_hyperparameters(ignore=["objective"])
        self.model = checkpoints.load(model).train().requires_grad_(True)  # checkpoints load in eval mode
        self.objective = objective or objective_for(self.model)
        # the frozen anchor is held outside the module tree: no gradients, no optimiser state, not in
        # Lightning checkpoints, and always in eval mode
        self._reference = (checkpoints.load(reference or model).requires_grad_(False),)
        self.val_terms = torch.nn.ModuleDict({k: MeanMetric() for k in ("guided_loss", "kl", "data_loss")})
        self._val_seen: set[str] = set()

    @property
    def reference(self) -> DiffusionModel:
        return self._reference[0]

    def setup(self, stage: str) -> None:
        """Refuse an export that would overwrite the model being fine-tuned or the reference."""
        inputs = {find(p).resolve() for p in (self.hparams.model, self.hparams.reference) if p}
        for callback in self.trainer.callbacks:
            directory = getattr(callback, "directory", None)
            if directory is not None and Path(directory).resolve() in inputs:
                raise ValueError(f"{type(callback).__name__}.directory {directory} is the model being fine-tuned or "
                                 f"its reference; export to a new directory (e.g. under runs/)")

    def on_fit_start(self) -> None:
        self.reference.to(self.device).eval()

    def on_validation_start(self) -> None:
        self.reference.to(self.device).eval()

    def training_step(self, batch, batch_idx: int) -> Tensor:
        guided, data = (batch["guided"], batch.get("data")) if isinstance(batch, dict) else (batch, None)
        x0, weight = guided
        hp = self.hparams
        loss_rows, kl_rows = self.objective.training_losses(self.model, x0, self.reference if hp.kl_weight else None)
        guided_loss = (weight * loss_rows).mean()
        loss = guided_loss
        logs = {"train/guided_loss": guided_loss}
        if kl_rows is not None:
            kl = (weight * kl_rows).mean()
            loss = loss + hp.kl_weight * kl
            logs["train/kl"] = kl
        if data is not None and hp.data_weight:
            data_loss = self.objective.training_losses(self.model, self.objective.clean_states(data))[0].mean()
            loss = loss + hp.data_weight * data_loss
            logs["train/data_loss"] = data_loss
        logs["train/loss"] = loss
        self.log_dict(logs, prog_bar=True, batch_size=len(weight))
        return loss

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 0:  # held-out guided samples
            x0, weight = batch
            loss_rows, kl_rows = self.objective.validation_losses(self.model, x0, self.reference)
            self.val_terms["guided_loss"].update(loss_rows, weight)
            self.val_terms["kl"].update(kl_rows, weight)
            self._val_seen.update(("guided_loss", "kl"))
        else:  # held-out original data
            loss_rows, _ = self.objective.validation_losses(self.model, self.objective.clean_states(batch))
            self.val_terms["data_loss"].update(loss_rows)
            self._val_seen.add("data_loss")

    def on_validation_epoch_end(self) -> None:
        hp = self.hparams
        values = {k: self.val_terms[k].compute() for k in sorted(self._val_seen)}
        for metric in self.val_terms.values():
            metric.reset()
        self._val_seen = set()
        if not values:
            return
        total = values["guided_loss"] + hp.kl_weight * values["kl"]
        if "data_loss" in values and hp.data_weight:
            total = total + hp.data_weight * values["data_loss"]
        self.log_dict({**{f"val/{k}": v for k, v in values.items()}, "val/loss": total}, prog_bar=True)

    def export_metadata(self) -> dict:
        """How the exported model was made (``ExportBest`` adds it to the checkpoint's metadata)."""
        hp = self.hparams
        info = {"from": hp.model, "reference": hp.reference or hp.model, "kl_weight": hp.kl_weight,
                "data_weight": hp.data_weight, "lr": hp.lr, "objective": type(self.objective).__name__}
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if isinstance(datamodule, GuidedSamplesDataModule):
            info["samples"] = datamodule.provenance()
        return {"finetuning": info}

    def configure_optimizers(self):
        return _adamw_with_cosine(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps)


# --- the fine-tuning set ------------------------------------------------------------------------------
def read_decode_run(output_dir: str | Path, method: str | None = None) -> tuple[str, list[int], list[str], Tensor]:
    """(method, indices, samples, rewards) of one method of a finished ``decode.py predict`` run, by index.

    ``method`` may be omitted when the run holds one method only.
    """
    from .decoding import PARTS

    path = Path(output_dir) / SAMPLES_CSV
    if not path.is_file():
        hint = (" (its parts/ are there: rerun the decode command to finish and merge them)"
                if (Path(output_dir) / PARTS).is_dir() else "")
        raise FileNotFoundError(f"data.samples: no {SAMPLES_CSV} in {output_dir}; expected the output directory of a "
                                f"finished decode.py predict run{hint}")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        column = reader.fieldnames[2]  # method, index, <sample column>, reward, metrics...
        rows = list(reader)
    methods = sorted({r["method"] for r in rows})
    if method is None:
        if len(methods) != 1:
            raise ValueError(f"data.method: {output_dir} holds the methods {methods}; name the one to fine-tune on")
        method = methods[0]
    elif method not in methods:
        raise ValueError(f"data.method: {method!r} is not a method of {output_dir}; it holds {methods}")
    chosen = sorted((int(r["index"]), r[column], float(r["reward"])) for r in rows if r["method"] == method)
    return (method, [i for i, _, _ in chosen], [s for _, s, _ in chosen],
            torch.tensor([r for _, _, r in chosen], dtype=torch.float64))


def reward_weights(rewards: Tensor, alpha: float | None) -> Tensor:
    """exp(r / alpha) normalised to mean 1 over the set (all ones without ``alpha``)."""
    if alpha is None:
        return torch.ones(len(rewards))
    w = torch.exp((rewards.double() - rewards.max()) / alpha)
    return (w / w.mean()).float()


def effective_sample_size(weights: Tensor) -> float:
    """(sum w)^2 / sum w^2: how many equally weighted samples the weighted set is worth."""
    w = weights.double()
    return float(w.sum() ** 2 / (w ** 2).sum())


def cache_fingerprint(module: Any, method: str, output_dir: Path, record: bool = True) -> str:
    """The settings digest of ``method`` as decode.py records it, checked against ``output_dir``'s record.

    A folder holding ``method``'s samples made with other settings is a one-line refusal naming the
    differences; with ``record``, a folder without a record of ``method`` gets one (decode.py's
    fingerprints.json).
    """
    from .fingerprint import differences, digest
    from .writer import read_fingerprints, write_fingerprints

    settings = module.method_settings()[method]
    fingerprint = digest(settings)
    recorded = read_fingerprints(output_dir)
    if method in recorded and recorded[method]["digest"] != fingerprint:
        raise ValueError(f"data.cache_dir {output_dir} holds samples of {method} made with other settings "
                         f"({differences(recorded[method]['settings'], settings)}); use a new cache_dir")
    if record and method not in recorded:
        write_fingerprints(output_dir, {**recorded, method: {"digest": fingerprint, "settings": settings}})
    return fingerprint


@torch.no_grad()
def generate_guided_samples(model: DiffusionModel, reward: Reward, decoder: Decoder, output_dir: str | Path,
                            indices: list[int], seed: int, method: str = "guided", reward_floor: float = 0.0,
                            batch_size: int = 32, rank: int = 0, world_size: int = 1,
                            fingerprint: str | None = None) -> int:
    """Decode the samples ``indices`` missing from ``output_dir`` with ``decoder``, this rank's share.

    ``output_dir`` is a decode.py output folder: the method's settings fingerprint (fingerprints.json),
    one line per finished batch in ``parts/rank<R>.jsonl`` (a killed run resumes), merged into
    ``samples.csv`` and ``summary.json`` by rank 0 once every rank is done (see
    :class:`GuidedSamplesDataModule`). Sample i uses the generator decode.py would give it (seed, method,
    i): ``decode.py predict`` with the same model, reward, floor, seed and method (and no metrics) gives
    the same samples, and could resume this folder. ``fingerprint``: the method's settings digest
    when the caller has already checked it against ``output_dir`` (see :func:`cache_fingerprint`).
    Returns the number of samples decoded.
    """
    from .decoding import DecodingModule
    from .folders import check_writable
    from .writer import append_record, finished_samples

    output_dir = Path(output_dir)
    check_writable(output_dir, "data.cache_dir")
    device = next(model.parameters()).device
    module = DecodingModule(model, reward, {method: decoder}, reward_floor=reward_floor, seed=seed).to(device)
    if fingerprint is None:
        # rank 0 records the fingerprint; the others only check it (a rank that reads before the record
        # is written finds nothing to refuse, and writes nothing)
        fingerprint = cache_fingerprint(module, method, output_dir, record=rank == 0)
    done = finished_samples(output_dir, {method: fingerprint}).get(method, set())
    todo = [i for i in indices if i not in done]
    batches = [todo[k: k + batch_size] for k in range(0, len(todo), batch_size)][rank::world_size]
    if not batches:
        return 0
    files = sample_files_for(model)
    module.on_predict_start()
    start, count, total = time.perf_counter(), 0, sum(map(len, batches))
    for batch in batches:
        prediction = module.predict_step({"index": torch.tensor(batch), "spare": torch.zeros(len(batch), dtype=torch.bool)}, 0)
        append_record(output_dir, rank, prediction, files, {method: fingerprint})
        count += len(batch)
        seconds = time.perf_counter() - start
        print(f"guided samples ({method}): {count}/{total} of rank {rank} in {seconds:.0f} s "
              f"({seconds / count:.2f} s/sample)", file=sys.stderr, flush=True)
    return count


def merge_guided_samples(model: DiffusionModel, output_dir: str | Path, method: str, fingerprint: str,
                         num_samples: int) -> dict:
    """Merge the parts of ``output_dir`` into decode.py's outputs (samples 0 .. num_samples-1 of ``method``)."""
    from .writer import write_outputs

    return write_outputs(Path(output_dir), [], {}, {}, sample_files_for(model), {method: fingerprint}, num_samples)


class GuidedSamplesDataModule(L.LightningDataModule):
    """Guided samples (with weights) to fine-tune on, and optionally original training data to mix in.

    The samples come from ``samples``, the output directory of a ``decode.py predict`` run (its
    ``samples.csv``, rows of ``method``), or are generated by ``decoder`` from the ``model``
    checkpoint into ``cache_dir``, a decode.py output folder (``samples.csv``, ``summary.json`` with
    reward quantiles and compute per sample, ``parts/`` written as batches finish: a killed run
    resumes, and rerunning with more ``num_samples`` decodes only the new ones; ``fingerprints.json``:
    a cache made with other settings is refused). Sample i is seeded from (seed, method, i) alone, for
    any batch size, resume point or number of processes. Under DDP every rank decodes its share, then
    all read the merged set (``cache_dir`` must be on a shared file system).

    The samples with the ``val_samples`` lowest indices are held out for validation; the training
    rows get weights exp(r / alpha) normalised to mean 1 (``alpha`` None: uniform).
    ``anchor_data`` (e.g. the pretraining DataModule) is mixed in: each training batch becomes
    ``{"guided": (x0, w), "data": <its batch>}``, and its validation loader is the second one.

    Args:
        model: checkpoint of the model that generates the samples; its ``encode`` turns samples into
            states (the model being fine-tuned, or an earlier round's).
        samples, method: a decode run's output directory, and which of its methods to read (may be
            omitted for a run of one method; for generation its name, default ``guided``).
        decoder, reward, reward_floor: generate the samples with this decoder and reward instead.
        num_samples: the samples 0 .. num_samples-1 (generation: required; reading: default all).
        val_samples: held-out samples (the lowest indices).
        cache_dir: where generated samples are written and found again (required with ``decoder``).
        seed: base seed of the generation.
        model_args: constructor arguments of the checkpoint replaced for generation (e.g. ``num_steps``).
        alpha: temperature of the reward weights.
        batch_size, generate_batch_size: rows per training batch; samples decoded per decoder call.
        anchor_data: a DataModule of original training data to mix into every batch.
    """

    def __init__(self, model: str, samples: str | None = None, method: str | None = None,
                 decoder: Decoder | None = None, reward: Reward | None = None, reward_floor: float = 0.0,
                 num_samples: int | None = None, val_samples: int = 64, cache_dir: str | None = None,
                 seed: int = 0, model_args: dict | None = None, alpha: float | None = None, batch_size: int = 64,
                 generate_batch_size: int = 32, anchor_data: L.LightningDataModule | None = None) -> None:
        super().__init__()
        if (samples is None) == (decoder is None):
            raise ValueError("data: give either data.samples (a decode run's output directory) or data.decoder "
                             "(with data.reward and data.cache_dir) to generate the samples, not both")
        if decoder is not None and (reward is None or cache_dir is None or num_samples is None):
            raise ValueError("data.decoder needs data.reward, data.cache_dir and data.num_samples")
        if alpha is not None and alpha <= 0:
            raise ValueError(f"data.alpha must be > 0 (weights exp(r / alpha)) or null for uniform weights, got {alpha}")
        if val_samples < 1 or (num_samples is not None and num_samples <= val_samples):
            raise ValueError(f"data.val_samples must be >= 1 and below data.num_samples, got {val_samples} and {num_samples}")
        if batch_size < 1 or generate_batch_size < 1:
            raise ValueError(f"data.batch_size and data.generate_batch_size must be >= 1, got {batch_size} and "
                             f"{generate_batch_size}")
        self.model_path, self.samples, self.method = model, samples, method
        self.decoder, self.reward, self.reward_floor = decoder, reward, reward_floor
        self.num_samples, self.val_samples = num_samples, val_samples
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.seed, self.model_args, self.alpha = seed, model_args, alpha
        self.batch_size, self.generate_batch_size = batch_size, generate_batch_size
        self.anchor_data = anchor_data
        self.splits: dict[str, TensorDataset] = {}
        self.info: dict[str, Any] = {}

    # --- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            model = checkpoints.load(self.model_path, overrides=self.model_args).requires_grad_(False)
            source = self.samples
            if self.decoder is not None:
                self._generate(model)
                source = self.cache_dir
            method, indices, samples, rewards = read_decode_run(source, self.method if self.decoder is None else self._gen_method)
            n = len(indices) if self.num_samples is None else self.num_samples
            if len(indices) < n or len(indices) <= self.val_samples:
                raise ValueError(f"data: {source} holds {len(indices)} samples of {method}; num_samples={self.num_samples} "
                                 f"and val_samples={self.val_samples} need more")
            encode = getattr(model, "encode", None)
            if encode is None:
                raise TypeError(f"data: {type(model).__name__} has no encode(samples) to turn samples into states")
            x0 = encode(samples[:n]).cpu()
            rewards = rewards[:n]
            v = self.val_samples
            weights = {"train": reward_weights(rewards[v:], self.alpha), "val": reward_weights(rewards[:v], self.alpha)}
            self.splits = {"train": TensorDataset(x0[v:], weights["train"]), "val": TensorDataset(x0[:v], weights["val"])}
            self.info = {"source": str(source), "method": method, "num_train": n - v, "num_val": v, "alpha": self.alpha,
                         "effective_train_samples": round(effective_sample_size(weights["train"]), 1),
                         "reward_median": float(rewards.median()), "reward_mean": float(rewards.mean())}
            print(f"fine-tuning set: {n - v} training and {v} validation samples of {method} from {source}; reward "
                  f"median {self.info['reward_median']:.3f}; effective training samples "
                  f"{self.info['effective_train_samples']}", file=sys.stderr, flush=True)
        if self.anchor_data is not None:
            self.anchor_data.setup(stage)

    def train_dataloader(self):
        guided = DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True, drop_last=True)
        if len(guided) == 0:
            raise ValueError(f"data.batch_size={self.batch_size} exceeds the {len(self.splits['train'])} training samples")
        if self.anchor_data is None:
            return guided
        return CombinedLoader({"guided": guided, "data": self.anchor_data.train_dataloader()}, mode="min_size")

    def val_dataloader(self):
        guided = DataLoader(self.splits["val"], batch_size=self.batch_size, shuffle=False)
        return guided if self.anchor_data is None else [guided, self.anchor_data.val_dataloader()]

    def provenance(self) -> dict:
        """Where the fine-tuning set came from and what it holds (for the exported model's metadata)."""
        return dict(self.info)

    # --- generation -------------------------------------------------------------------------------
    @property
    def _gen_method(self) -> str:
        return self.method or "guided"

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def _generate(self, model: DiffusionModel) -> None:
        """Decode the missing samples (every rank its share), then merge them on rank 0."""
        from .decoding import DecodingModule

        rank, world = self._rank_and_world()
        barrier = self.trainer.strategy.barrier if world > 1 else (lambda: None)
        method = self._gen_method
        decoding = DecodingModule(model, self.reward, {method: self.decoder}, reward_floor=self.reward_floor, seed=self.seed)
        if rank == 0:  # records the settings (or refuses other ones) before any rank decodes
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fingerprint = cache_fingerprint(decoding, method, self.cache_dir)
        barrier()
        if rank != 0:
            fingerprint = cache_fingerprint(decoding, method, self.cache_dir, record=False)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        generate_guided_samples(model.to(device), self.reward, self.decoder, self.cache_dir, list(range(self.num_samples)),
                                self.seed, method, self.reward_floor, self.generate_batch_size, rank, world, fingerprint)
        barrier()
        if rank == 0 and (not (self.cache_dir / SAMPLES_CSV).is_file() or _stale(self.cache_dir)):
            merge_guided_samples(model, self.cache_dir, method, fingerprint, self.num_samples)
        barrier()


def _stale(directory: Path) -> bool:
    """Whether parts were written after the merged samples.csv (another rank decoded, or a crash after)."""
    from .decoding import PARTS

    csv_time = (directory / SAMPLES_CSV).stat().st_mtime
    return any(p.stat().st_mtime > csv_time for p in (directory / PARTS).glob("*.jsonl"))


def __getattr__(name: str):
    from ..renamed import module_getattr

    return module_getattr(__name__, name)
