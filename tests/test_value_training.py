"""Value-regression objectives (Algorithm 2 and its exp(r / alpha) variant)."""
import math

import pytest
import torch

from svdd_lightning.lightning.training import value_loss


@pytest.mark.parametrize("target, alpha", [("reward", 1.0), ("exp_reward", 0.5), ("exp_reward", 2.0)])
def test_value_loss_minimiser_is_the_mean_or_the_soft_value(target, alpha):
    """A constant prediction fitted to rewards {0, 3} (equally likely) converges to E[r] for MSE and to
    alpha * log E[exp(r / alpha)] for the exp objective."""
    rewards = torch.tensor([0.0, 3.0] * 64)
    v = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([v], lr=0.05)
    for _ in range(2000):
        optimizer.zero_grad()
        value_loss(v.expand_as(rewards), rewards, target, alpha, reward_offset=3.0).backward()
        optimizer.step()
    expected = 1.5 if target == "reward" else alpha * math.log((1 + math.exp(3.0 / alpha)) / 2)
    assert float(v) == pytest.approx(expected, abs=1e-2)


def test_value_loss_rejects_unknown_target():
    with pytest.raises(ValueError, match="ValueRegression.target"):
        value_loss(torch.zeros(2), torch.zeros(2), "q_learning")


def _tiny_model(steps: int = 6):
    from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion

    torch.manual_seed(0)
    return MaskedDiffusion(DilatedConvDenoiser(4, channels=8, dilations=(1,)), "ACGT", 12, num_steps=steps).eval()


def test_rollouts_keep_each_states_successor():
    from svdd_lightning.lightning.rollouts import generate_rollouts

    model = _tiny_model()
    with torch.inference_mode():
        data = generate_rollouts(model, lambda s: [x.count("G") for x in s], list(range(6)), seed=0,
                                 levels_per_rollout=model.num_steps - 1)
    mask = model.mask_id
    unmasked = data["x"] != mask
    assert torch.equal(data["x_next"][unmasked], data["x"][unmasked])  # carry-over: unmasked tokens stay
    assert ((data["x_next"] == mask).sum(1) <= (data["x"] == mask).sum(1)).all()
    torch.testing.assert_close(data["t_next"], data["t"] - 1 / model.num_steps)
    last = data["level"] == model.num_steps - 1
    assert last.any() and not (data["x_next"][last] == mask).any()  # the last successor is x_0


def test_soft_q_bootstrap_target_and_ema_update(tmp_path):
    import lightning as L

    from svdd_lightning import checkpoints
    from svdd_lightning.domains.dna.oracles import EnformerStyleClassifier
    from svdd_lightning.lightning.rollouts import RolloutDataModule
    from svdd_lightning.lightning.training import ValueRegression

    checkpoints.save(_tiny_model(), tmp_path / "mdlm")
    network = EnformerStyleClassifier(seq_len=12, stem_channels=8, stem_pool=2, tower_channels=(8,),
                                      num_transformer_layers=1, num_heads=2, input_symbols=5, time_conditioning=True)
    module = ValueRegression(network, target="soft_q", alpha=1.0, target_decay=0.5, warmup_steps=1).train()
    assert not module.target_network.training
    x = torch.randint(0, 5, (4, 12))
    reward = torch.tensor([1.0, 2.0, 3.0, 4.0])
    t_next = torch.tensor([0.0, 0.5, 0.0, 0.25])
    target = module.bootstrap_target((x, t_next + 0.1, reward, x, t_next))
    with torch.no_grad():
        bootstrapped = module.target_network(x, t_next)
    torch.testing.assert_close(target, torch.where(t_next == 0, reward, bootstrapped))
    with pytest.raises(ValueError, match="soft_q needs"):
        module.bootstrap_target((x, t_next, reward))

    class GCReward:
        name = "gc"

        def __call__(self, seqs):
            return [s.count("G") + s.count("C") for s in seqs]

    data = RolloutDataModule(str(tmp_path / "mdlm"), GCReward(), num_rollouts=8, val_rollouts=4, levels_per_rollout=3,
                             shard_size=4, batch_size=8)
    before = [p.clone() for p in module.target_network.parameters()]
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    assert "train/loss_soft_q" in trainer.callback_metrics and "val/mse" in trainer.callback_metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, module.target_network.parameters()))
