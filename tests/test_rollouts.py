"""SVDD-MC value-network data: rollouts, forward noising, the sharded and cached DataModule, DDP."""
from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from svdd_lightning import checkpoints
from svdd_lightning.core.reward import Reward
from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion
from svdd_lightning.domains.dna.oracles import EnformerStyleClassifier
from svdd_lightning.lightning import rollouts
from svdd_lightning.lightning.rollouts import RolloutDataModule, forward_noised_pairs, generate_rollouts
from svdd_lightning.lightning.training import ValueRegression
from svdd_lightning.seeds import sample_seed

LENGTH, STEPS, LEVELS = 16, 8, 3


class GCContent(Reward):
    """Fraction of G and C (module level, so that ddp_spawn can pickle it)."""

    name = "gc"

    def __call__(self, samples):
        return [sum(c in "GC" for c in s) / len(s) for s in samples]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = MaskedDiffusion(DilatedConvDenoiser(4, channels=8, dilations=(1, 2)), "ACGT", LENGTH, num_steps=STEPS)
    return checkpoints.save(model.eval(), tmp_path_factory.mktemp("ckpt") / "mdlm")


@pytest.fixture(scope="module")
def model(model_dir) -> MaskedDiffusion:
    return checkpoints.load(model_dir)


def datamodule(model: Path | MaskedDiffusion, **kwargs) -> RolloutDataModule:
    args = dict(num_rollouts=8, val_rollouts=8, levels_per_rollout=LEVELS, shard_size=4, batch_size=8)
    return RolloutDataModule(str(model) if isinstance(model, Path) else model, GCContent(), **{**args, **kwargs})


def sort_pairs(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    order = torch.argsort(data["rollout"] * (STEPS + 1) + data["level"])
    return {k: v[order] for k, v in data.items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_rollouts_shapes_levels_and_times(model):
    data = generate_rollouts(model, GCContent(), list(range(8)), seed=0, levels_per_rollout=LEVELS)
    n = 8 * LEVELS
    assert data["x"].shape == data["x_next"].shape == (n, LENGTH) and data["x"].dtype == torch.long
    assert {k: v.shape for k, v in data.items() if k not in ("x", "x_next")} == {
        k: (n,) for k in ("t", "level", "reward", "rollout", "t_next")}
    assert data["level"].min() >= 1 and data["level"].max() <= STEPS - 1
    assert torch.allclose(data["t"], 1 - data["level"].float() / STEPS)
    assert bool(((data["t"] > 0) & (data["t"] < 1)).all())
    for i in range(8):
        rows = data["rollout"] == i
        levels = data["level"][rows]
        assert rows.sum() == LEVELS and levels.unique().numel() == LEVELS and bool((levels.diff() > 0).all())
        assert data["reward"][rows].unique().numel() == 1 and 0 <= float(data["reward"][rows][0]) <= 1
        # one chain: tokens unmasked at a lower level are kept at the higher ones
        x = data["x"][rows]
        for early, late in zip(x[:-1], x[1:]):
            unmasked = early != model.mask_id
            assert torch.equal(early[unmasked], late[unmasked])
            assert (late == model.mask_id).sum() <= (early == model.mask_id).sum()


def test_rollouts_depend_on_seed_and_index_only(model):
    reward = GCContent()
    all_eight = generate_rollouts(model, reward, list(range(8)), seed=0, levels_per_rollout=LEVELS)
    assert_same(all_eight, generate_rollouts(model, reward, list(range(8)), seed=0, levels_per_rollout=LEVELS,
                                             chunk_size=3))
    other = generate_rollouts(model, reward, list(range(8)), seed=1, levels_per_rollout=LEVELS)
    assert not torch.equal(all_eight["x"], other["x"]) or not torch.equal(all_eight["level"], other["level"])
    last_four = generate_rollouts(model, reward, [4, 5, 6, 7], seed=0, levels_per_rollout=LEVELS)
    assert_same({k: v[all_eight["rollout"] >= 4] for k, v in all_eight.items()}, last_four)
    with pytest.raises(ValueError, match="levels_per_rollout must be in 1..7"):
        generate_rollouts(model, reward, [0], seed=0, levels_per_rollout=STEPS)


def test_cache_is_reused_resumed_and_checked(model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = datamodule(model_dir, cache_dir=str(cache))
    first.setup("fit")
    shards = sorted(p.name for p in cache.iterdir())
    assert shards == ["manifest.json", "train-00000.safetensors", "train-00001.safetensors",
                      "val-00000.safetensors", "val-00001.safetensors"]
    assert set(first.split_data("val")["rollout"].tolist()) == set(range(8, 16))  # held-out rollouts

    def no_model_calls(*args, **kwargs):
        raise AssertionError("the pretrained model was called although every shard is cached")

    with monkeypatch.context() as patch:
        patch.setattr(MaskedDiffusion, "denoise", no_model_calls)
        second = datamodule(model_dir, cache_dir=str(cache))
        second.setup("fit")
    for split in ("train", "val"):
        assert_same(first.split_data(split), second.split_data(split))
    x, t, reward, x_next, t_next = next(iter(second.val_dataloader()))
    assert x.shape == (8, LENGTH) and t.shape == reward.shape == (8,)
    assert len(second.train_dataloader()) == 8 * LEVELS // 8

    (cache / "train-00001.safetensors").unlink()  # an interrupted generation
    generated = []
    real = rollouts.generate_rollouts
    monkeypatch.setattr(rollouts, "generate_rollouts", lambda m, r, indices, *a: generated.append(indices) or real(
        m, r, indices, *a))
    resumed = datamodule(model_dir, cache_dir=str(cache))
    resumed.setup("fit")
    assert generated == [[4, 5, 6, 7]]
    assert_same(first.split_data("train"), resumed.split_data("train"))

    with pytest.raises(ValueError, match=r"seed: 0 -> 1.*use a new cache_dir"):
        datamodule(model_dir, cache_dir=str(cache), seed=1).setup("fit")


def test_ddp_partition_and_checks(model_dir):
    dm = datamodule(model_dir, num_rollouts=16)
    for world_size in (2, 3):  # 4 train and 2 val shards: the second split shards at the rollout level
        for split in ("train", "val"):
            whole = dm.split_data(split, 0, 1)
            ranks = [dm.split_data(split, r, world_size) for r in range(world_size)]
            rollouts_of = [r["rollout"].tolist() for r in ranks]
            assert sum(map(len, rollouts_of)) == len(whole["rollout"])  # no pair twice
            assert max(map(len, rollouts_of)) - min(map(len, rollouts_of)) <= LEVELS  # one rollout at most
            union = {k: torch.cat([r[k] for r in ranks]) for k in whole}
            assert_same(sort_pairs(union), sort_pairs(whole))
    with pytest.raises(ValueError, match="num_rollouts must be a positive multiple of data.shard_size=4"):
        datamodule(model_dir, num_rollouts=6)
    with pytest.raises(ValueError, match=r"data.val_rollouts: a rank gets 0 val pairs .* on 5 processes"):
        datamodule(model_dir, val_rollouts=4).split_data("train", 0, 5)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0,
                                 _accelerator_connector=SimpleNamespace(use_distributed_sampler=True))
    with pytest.raises(ValueError, match="use_distributed_sampler: false"):
        dm.setup("fit")


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_spread_uses_every_rollout_once_in_equal_batch_counts(num_shards, world_size):
    shard_size, levels, batch_size = 3, 2, 4
    parts = [rollouts.spread(num_shards, shard_size, r, world_size) for r in range(world_size)]
    positions = [[i for k in shards for i in range(k * shard_size, (k + 1) * shard_size)] + list(rest)
                 for shards, rest in parts]
    assert sorted(i for p in positions for i in p) == list(range(num_shards * shard_size))
    if num_shards % world_size == 0:  # whole shards, round robin, as before
        assert all(shards == list(range(r, num_shards, world_size)) and not rest for r, (shards, rest) in enumerate(parts))
    pairs = [len(p) * levels for p in positions]
    num_batches = max(-(-n // batch_size) for n in pairs)
    counts = []
    for n in pairs:
        batches = list(rollouts.EvenBatches(range(n), batch_size, num_batches))
        assert [i for b in batches for i in b] == list(range(n)) and all(1 <= len(b) <= batch_size for b in batches)
        counts.append(len(batches))
    assert counts == [num_batches] * world_size


def test_one_process_batches_are_a_plain_dataloaders(model_dir):
    dm = datamodule(model_dir, batch_size=5)  # 24 pairs: batches of 5 and a last one of 4
    dm.setup("fit")
    generator = torch.Generator().manual_seed(sample_seed(dm.seed, "shuffle", 0))
    plain = DataLoader(dm._dataset("train"), batch_size=5, shuffle=True, generator=generator)
    ours = dm.train_dataloader()
    for _ in range(2):  # two epochs: the shuffles follow the same generator
        for a, b in zip(plain, ours, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    plain_val = DataLoader(dm._dataset("val"), batch_size=5)
    for a, b in zip(plain_val, dm.val_dataloader(), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


class PredictionTable(nn.Module):
    """A value network whose input is a row index: each row's prediction is fixed, whatever batch it is in."""

    def __init__(self, predictions: torch.Tensor):
        super().__init__()
        self.register_buffer("predictions", predictions)

    def forward(self, rows: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.predictions[rows]


def test_validation_metrics_of_two_halves_merged_are_the_whole_sets(model):
    """What DDP does at compute time (each rank's states gathered and merged) gives the one-process figures,
    also where a batch holds a single row of a time bucket."""
    torch.manual_seed(0)
    network = EnformerStyleClassifier(seq_len=LENGTH, stem_channels=8, stem_pool=2, tower_channels=(8,),
                                      num_transformer_layers=1, num_heads=2, input_symbols=5, time_conditioning=True)
    data = generate_rollouts(model, GCContent(), list(range(12)), seed=0, levels_per_rollout=LEVELS)
    data["reward"] = data["reward"] + 0.01 * torch.randn(len(data["reward"]))
    with torch.no_grad():
        table = PredictionTable(network(data["x"], data["t"]))
    batch = lambda rows: (rows, data["t"][rows], data["reward"][rows])  # noqa: E731
    rows = torch.randperm(len(data["t"]))
    modules = [ValueRegression(table, num_buckets=4).eval() for _ in range(3)]
    with torch.no_grad():
        for i in range(0, len(rows), 5):
            modules[0].validation_step(batch(rows[i:i + 5]), i)
        for i, chunk in enumerate([rows[:7], rows[7:9], rows[9:10], rows[10:]]):  # a one-row batch
            modules[1 + (i % 2)].validation_step(batch(chunk), i)
    whole, half, other = modules
    pairs = [(getattr(m, name) for m in modules) for name in ("val_mse", "val_pearson", "val_spearman")]
    for w, a, b in [*pairs, *zip(whole.bucket_pearson, half.bucket_pearson, other.bucket_pearson)]:
        a._reduce_states(b.metric_state)  # stacks or concatenates the states, as a DDP sync does
        assert float(a.compute()) == pytest.approx(float(w.compute()), rel=1e-9)


def test_forward_noising_source(model, model_dir, tmp_path):
    sequences = ["".join("ACGT"[(i * j + i) % 4] for j in range(LENGTH)) for i in range(16)]
    fasta = tmp_path / "designs.fa"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(sequences)))
    dm = datamodule(model_dir, source="forward_noising", samples=str(fasta))
    dm.setup("fit")
    for split in ("train", "val"):
        data = dm.split_data(split)
        assert len(data["t"]) == 8 * LEVELS and data["level"].min() >= 1 and data["level"].max() <= STEPS - 1
        clean = model.encode([sequences[i] for i in data["rollout"].tolist()])
        unmasked = data["x"] != model.mask_id
        assert torch.equal(data["x"][unmasked], clean[unmasked])
        expected = torch.tensor(GCContent()([sequences[i] for i in data["rollout"].tolist()]))
        assert torch.allclose(data["reward"], expected)
    direct = forward_noised_pairs(model, GCContent(), model.encode(sequences[:4]), [0, 1, 2, 3], 0, LEVELS)
    assert_same(direct, {k: v[:4 * LEVELS] for k, v in dm.split_data("train").items()})
    with pytest.raises(ValueError, match="16 sequences; num_rollouts \\+ val_rollouts = 24"):
        datamodule(model_dir, num_rollouts=16, source="forward_noising", samples=str(fasta)).setup("fit")
    with pytest.raises(ValueError, match="data.samples"):
        datamodule(model_dir, source="forward_noising")


def test_value_regression_fits_under_cpu_ddp(model_dir, tmp_path):
    """Uneven shards (3 train, 1 val for 2 processes) fit, and the validation figures are the whole set's."""
    cache = tmp_path / "cache"
    network = EnformerStyleClassifier(seq_len=LENGTH, stem_channels=8, stem_pool=2, tower_channels=(8,),
                                      num_transformer_layers=1, num_heads=2, input_symbols=5, time_conditioning=True)
    # a collective timeout turns a DDP deadlock into a failure instead of a hung test run
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=120))
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=1, use_distributed_sampler=False,
                        **quiet)
    # four time buckets with small validation batches: ranks see different buckets, and the bucket
    # metrics must still be computed (a collective) for the same buckets on every rank
    module = ValueRegression(network, warmup_steps=1, num_buckets=4)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    # 15 and 12 train pairs, 6 and 3 val pairs per rank: 4 and 2 batches on both
    data = dict(num_rollouts=9, val_rollouts=3, shard_size=3, batch_size=4, cache_dir=str(cache))
    trainer.fit(module, datamodule=datamodule(model_dir, **data))
    # ddp_spawn sends back rank 0's weights (those of the last validation) and metrics
    assert trainer.state.finished and {"train/loss_reward", "val/mse"} <= set(trainer.callback_metrics)
    assert any(not torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert sorted(p.name for p in cache.iterdir()) == ["manifest.json", "train-00000.safetensors",
                                                       "train-00001.safetensors", "train-00002.safetensors",
                                                       "val-00000.safetensors"]
    # the fitted module handed back by ddp_spawn (it may hold metric states of its last validation)
    one = L.Trainer(accelerator="cpu", devices=1, **quiet).validate(module, datamodule=datamodule(model_dir, **data))[0]
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=120))
    two = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, use_distributed_sampler=False,
                    **quiet).validate(module, datamodule=datamodule(model_dir, **data))[0]
    assert not math.isnan(two["val/pearson"]) and any(k.startswith("val/pearson_t") for k in two)
    assert two == pytest.approx(one, abs=1e-5, nan_ok=True)


def test_a_model_object_gives_the_checkpoints_rollouts_and_its_own_cache(model, model_dir, tmp_path):
    """RolloutDataModule takes the model itself as DecodingModule does; its cache is tied to its weights."""
    from_path, from_object = datamodule(model_dir), datamodule(checkpoints.load(model_dir))
    from_path.setup("fit")
    from_object.setup("fit")
    assert_same(from_path.split_data("train"), from_object.split_data("train"))
    assert not any(p.requires_grad for p in from_object.pretrained.parameters()) and not from_object.pretrained.training

    cache = str(tmp_path / "cache")
    datamodule(checkpoints.load(model_dir), cache_dir=cache).setup("fit")
    other = checkpoints.load(model_dir)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(ValueError, match=r"model: .*use a new cache_dir"):
        datamodule(other, cache_dir=cache).setup("fit")
    with pytest.raises(ValueError, match="model_args applies to a checkpoint path"):
        datamodule(other, model_args={"num_steps": 4})
