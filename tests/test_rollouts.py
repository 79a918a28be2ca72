"""SVDD-MC value-network data: rollouts, forward noising, the sharded and cached DataModule, DDP."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from svdd_lightning import checkpoints
from svdd_lightning.core.reward import RewardFunction
from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion
from svdd_lightning.domains.dna.oracles import EnformerStyleClassifier
from svdd_lightning.lightning import rollouts
from svdd_lightning.lightning.rollouts import RolloutDataModule, forward_noised_pairs, generate_rollouts
from svdd_lightning.lightning.training import ValueRegression

LENGTH, STEPS, LEVELS = 16, 8, 3


class GCContent(RewardFunction):
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
    for split in ("train", "val"):
        whole = dm.split_data(split, 0, 1)
        ranks = [dm.split_data(split, r, 2) for r in range(2)]
        assert len(ranks[0]["t"]) == len(ranks[1]["t"])
        assert not set(ranks[0]["rollout"].tolist()) & set(ranks[1]["rollout"].tolist())
        union = {k: torch.cat([ranks[0][k], ranks[1][k]]) for k in whole}
        assert_same(sort_pairs(union), sort_pairs(whole))
    with pytest.raises(ValueError, match="must both divide by world_size=3"):
        dm.split_data("train", 0, 3)
    with pytest.raises(ValueError, match="num_rollouts must be a positive multiple of data.shard_size=4"):
        datamodule(model_dir, num_rollouts=6)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0,
                                 _accelerator_connector=SimpleNamespace(use_distributed_sampler=True))
    with pytest.raises(ValueError, match="use_distributed_sampler: false"):
        dm.setup("fit")


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
    cache = tmp_path / "cache"
    network = EnformerStyleClassifier(seq_len=LENGTH, stem_channels=8, stem_pool=2, tower_channels=(8,),
                                      num_transformer_layers=1, num_heads=2, input_symbols=5, time_conditioning=True)
    # a collective timeout turns a DDP deadlock into a failure instead of a hung test run
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=120))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=3, use_distributed_sampler=False,
                        limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    # four time buckets with one small validation batch per rank: ranks see different buckets, and the
    # bucket metrics must still be computed (a collective) for the same buckets on every rank
    module = ValueRegression(network, warmup_steps=1, num_buckets=4)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    trainer.fit(module, datamodule=datamodule(model_dir, cache_dir=str(cache)))
    # ddp_spawn sends back rank 0's weights and metrics (not its step counter)
    assert trainer.state.finished and {"train/loss_reward", "val/mse"} <= set(trainer.callback_metrics)
    assert any(k.startswith("val/pearson_t") for k in trainer.callback_metrics)
    assert any(not torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert sorted(p.name for p in cache.iterdir()) == ["manifest.json", "train-00000.safetensors",
                                                       "train-00001.safetensors", "val-00000.safetensors",
                                                       "val-00001.safetensors"]


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
