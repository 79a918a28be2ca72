"""Mixed and reduced precision: rewards and values score in float32 whatever the run's precision, and the
DiT backbone runs with bf16 weights (``precision: bf16-true``)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from svdd_lightning import NetworkValue, PretrainedSampling, checkpoints
from svdd_lightning.core.reward import GuardedReward
from svdd_lightning.core.run import Candidates, Run
from svdd_lightning.diffusion import MaskedDiffusion, MDLMTransformer
from svdd_lightning.domains.sequences.oracle import OracleReward

ROOT = Path(__file__).resolve().parents[1]
BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def variants() -> torch.Tensor:
    """A random 200-nt DNA sequence and nine variants of it, each with one token changed."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randint(0, 4, (200,), generator=generator)
    rows = base.repeat(10, 1)
    for i in range(1, 10):
        rows[i, 20 * i] = (rows[i, 20 * i] + 1) % 4
    return rows


def test_ten_one_token_variants_get_identical_rewards_in_fp32_and_under_bf16_autocast(variants):
    oracle = OracleReward(str(ROOT / "checkpoints/dna/oracle_reward"))
    model = checkpoints.load(ROOT / "checkpoints/dna/mdlm").eval()
    sequences = model.decode(variants)
    with torch.no_grad():
        with torch.autocast(**BF16):
            raw_bf16 = oracle.network(variants).float().tolist()  # what scoring inside autocast used to give
    reward = GuardedReward(oracle)
    fp32 = reward(sequences).tolist()
    run = lambda: Run(model, reward, range(10))  # noqa: E731
    with torch.autocast(**BF16):
        mixed = reward(sequences).tolist()
        mixed_states = run().score(variants).tolist()  # the token path SVDD-PM uses
    assert len(set(fp32)) == 10
    assert mixed == fp32 and mixed_states == fp32
    assert raw_bf16 != fp32  # the check has teeth: bf16 autocast moves these rewards


def test_network_values_are_float32_under_bf16_autocast(variants):
    network = checkpoints.load(ROOT / "checkpoints/dna/value_mc")
    model = checkpoints.load(ROOT / "checkpoints/dna/mdlm").eval()
    x = variants.clone()
    x[:, 190:] = model.mask_id  # a partially masked state (the changed tokens stay visible)
    value = NetworkValue(network)

    def values():
        run = Run(model, GuardedReward(lambda s: [0.0] * len(s)), range(10))
        return value(Candidates(run, x, level=model.num_steps // 2))

    with torch.no_grad():
        fp32 = values()
        with torch.autocast(**BF16):
            mixed = values()
    assert mixed.dtype == torch.float32 and torch.equal(mixed, fp32) and len(set(fp32.tolist())) == 10


def test_dit_backbone_runs_with_bf16_weights():
    """bf16-true converts the model's weights: the DiT's float32 time features and float32 layer norms must
    meet its bf16 layers in bf16 (they were float32, and the next matmul refused the mix)."""
    torch.manual_seed(0)
    backbone = MDLMTransformer(vocab_size=5, hidden_size=16, cond_dim=8, n_blocks=2, n_heads=2, dropout=0.0)
    model = MaskedDiffusion(backbone, "ACGT", seq_len=12, num_steps=4, time_conditioning=True).eval()
    tokens = torch.randint(0, 5, (3, 12))
    with torch.no_grad():
        fp32 = model.log_probs(tokens, torch.full((3,), 0.5))
        model.to(torch.bfloat16)
        bf16 = model.log_probs(tokens, torch.full((3,), 0.5))
        result = PretrainedSampling().sample(model, lambda s: [0.0] * len(s), [torch.Generator().manual_seed(i)
                                                                               for i in range(3)])
    assert bf16.dtype == torch.float32
    finite = torch.isfinite(fp32)
    assert torch.equal(finite, torch.isfinite(bf16))
    assert (bf16[finite].exp() - fp32[finite].exp()).abs().max() < 0.05  # bf16 rounding, not a different model
    assert all(len(s) == 12 and set(s) <= set("ACGT") for s in result.samples)
