"""Decoding on an accelerator, checked without one: every domain's decode job runs with its networks on a
stand-in device (``fake_device.FakeAccelerator``: CPU data, another device, CUDA's device checks), must give
the CPU run's samples and rewards, and must not move the hot path's tensors to the host at every step."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fake_device import FakeAccelerator, OnDevice, counting
from tiny_dna import build_tiny_checkpoints, tiny_enformer

from svdd_lightning import DPS, SMC, SVDD, BestOfN, NetworkValue, PosteriorMeanValue, PretrainedSampling
from svdd_lightning.core.reward import FunctionReward, ProxyGuided, WeightedSum
from svdd_lightning.core.selection import resample, select_candidates
from svdd_lightning.evaluation import ELBOMetric, ScoreMetric
from svdd_lightning.lightning.decoding import DecodingModule
from svdd_lightning.domains.sequences.oracle import OracleReward


def methods(value_network: nn.Module, m: int = 3) -> dict:
    return {"pretrained": PretrainedSampling(), "best_of_n": BestOfN(2), "svdd_pm": SVDD(PosteriorMeanValue(), m),
            "svdd_mc": SVDD(NetworkValue(value_network), m), "svdd_soft": SVDD(PosteriorMeanValue(), m, alpha=0.5),
            "smc": SMC(PosteriorMeanValue(), alpha=0.5), "dps": DPS(scale=0.5)}


def modules_in(obj, seen=None) -> list[nn.Module]:
    """Every nn.Module reachable from ``obj``'s attributes, dicts and lists (rewards, values, metrics)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, torch.Tensor)) or obj is None:
        return []
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else \
        vars(obj).values() if hasattr(obj, "__dict__") else []
    return [m for item in items for m in modules_in(item, seen)]


def predict(module: DecodingModule, indices: list[int]) -> list[dict]:
    batch = {"index": torch.tensor(indices), "spare": torch.zeros(len(indices), dtype=torch.bool)}
    with torch.no_grad():  # Lightning predicts under inference mode; the stand-in device needs no_grad
        return module.predict_step(batch, 0)["rows"]


def assert_rows_close(rows: list[dict], expected: list[dict]) -> None:
    """The same rows, floats and images to 1e-5: a network on the stand-in device may take another kernel
    than on the CPU (e.g. PyTorch's transformer fast path is for CPU and CUDA tensors only)."""
    assert [sorted(row) for row in rows] == [sorted(row) for row in expected]
    for row, want in zip(rows, expected):
        for key, value in row.items():
            if isinstance(value, (float, torch.Tensor)):
                torch.testing.assert_close(torch.as_tensor(value), torch.as_tensor(want[key]), atol=1e-5, rtol=1e-5)
            else:
                assert value == want[key], (key, row, want)


def assert_same_on_the_device(build) -> FakeAccelerator:
    """The decode job of ``build()`` gives the same rows on the stand-in device as on the CPU, with every
    network of the job (model, reward, values, metrics) moved there by ``on_predict_start``."""
    torch.manual_seed(0)
    expected = predict(build(), [0, 1, 2, 3])
    torch.manual_seed(0)
    module = build()
    with FakeAccelerator() as accel:
        module.to(accel.device)
        module.on_predict_start()
        stray = [type(m).__name__ for m in modules_in(vars(module))
                 for p in [*m.parameters(), *m.buffers()] if not isinstance(p, OnDevice)]
        assert not stray, f"networks left on the CPU: {sorted(set(stray))}"
        rows = predict(module, [0, 1, 2, 3])
    assert_rows_close(rows, expected)
    return accel


@pytest.fixture(scope="module")
def dna(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_checkpoints(tmp_path_factory.mktemp("devices_dna"))


def dna_module(paths: dict[str, Path]) -> DecodingModule:
    from svdd_lightning import checkpoints

    oracles = WeightedSum({"reward": OracleReward(str(paths["reward"])), "eval": OracleReward(str(paths["eval"]))},
                          {"eval": 0.5})
    reward = ProxyGuided(oracles, tiny_enformer(time_conditioning=True))  # DPS through a time-conditioned proxy
    return DecodingModule(checkpoints.load(paths["mdlm"]), reward, methods(checkpoints.load(paths["value"])),
                          metrics={"eval": ScoreMetric(OracleReward(str(paths["eval"]))), "elbo": ELBOMetric(2)})


def test_dna_decoding_on_a_device_matches_the_cpu(dna):
    assert_same_on_the_device(lambda: dna_module(dna))


def test_svdd_pm_keeps_log_probabilities_and_tokens_on_the_device(dna):
    """Per step SVDD-PM sends no log-probability table or token string to the host: the oracle reads the
    model's tokens on the device (each distinct x0_hat once); only the final samples come back."""
    from svdd_lightning import checkpoints
    from svdd_lightning.core.reward import GuardedReward

    model = checkpoints.load(dna["mdlm"]).eval()
    reward = GuardedReward(OracleReward(str(dna["reward"])))
    b, m = 4, 3
    generators = lambda: [torch.Generator().manual_seed(i) for i in range(b)]  # noqa: E731
    with torch.no_grad():
        expected = SVDD(PosteriorMeanValue(), m).sample(model, reward, generators())
    with FakeAccelerator() as accel, torch.no_grad(), counting(accel) as traffic:
        model.to(accel.device)
        reward.fn.to(accel.device)
        result = SVDD(PosteriorMeanValue(), m).sample(model, reward, generators())
    assert result.samples == expected.samples
    torch.testing.assert_close(result.rewards, expected.rewards)
    final = b * model.seq_len + b * 4  # the samples' tokens (a byte each) and their rewards
    one_step_of_tables = b * m * model.seq_len * model.vocab_size * 4
    assert traffic.downloaded_bytes <= final + 64, (traffic, one_step_of_tables)


def molecule_module() -> DecodingModule:
    from ddp_jobs import ATOMS, GraphGIN, smiles_length, tiny_graph_diffusion

    gin = lambda: GraphGIN(len(ATOMS), hidden=8, num_layers=2, time_dim=8)  # noqa: E731
    reward = ProxyGuided(FunctionReward(smiles_length), gin())
    decoders = {name: decoder for name, decoder in methods(gin().eval(), m=2).items()
                if name in ("pretrained", "svdd_mc", "smc", "dps")}
    decoders["svdd_pm_x0_steps"] = SVDD(PosteriorMeanValue(x0_steps=2), 2)
    return DecodingModule(tiny_graph_diffusion().eval(), reward, decoders)


def test_molecule_decoding_and_dps_on_a_device_match_the_cpu():
    assert_same_on_the_device(molecule_module)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    from svdd_lightning import checkpoints
    from svdd_lightning.domains.images.networks import MNISTClassifier

    torch.manual_seed(0)
    return checkpoints.save(MNISTClassifier(channels=(4, 4)).eval(), tmp_path_factory.mktemp("cls") / "classifier")


def image_module(classifier: Path) -> DecodingModule:
    from ddp_jobs import tiny_unet_model
    from svdd_lightning.domains.images.networks import ImageValueCNN
    from svdd_lightning.domains.images.rewards import ClassifierLogProb

    decoders = methods(ImageValueCNN(channels=(4,), time_dim=8).eval())
    return DecodingModule(tiny_unet_model().eval(), ClassifierLogProb(str(classifier), target_class=3), decoders)


def test_image_decoding_on_a_device_matches_the_cpu(classifier):
    assert_same_on_the_device(lambda: image_module(classifier))


def test_stable_diffusion_images_stay_on_the_device_for_the_aesthetic_reward(tmp_path):
    """SVDD-PM's candidate images go from the VAE to CLIP on the device; the host receives the final images
    once (the VAE decodes the final batch once)."""
    from test_sd_decode import build_tiny_aesthetic
    from tiny_images import IMAGE_SIZE, build_tiny_sd

    from svdd_lightning.core.reward import GuardedReward
    from svdd_lightning.domains.images.diffusers_model import StableDiffusion
    from svdd_lightning.domains.images.rewards import AestheticScore

    sd = StableDiffusion(str(build_tiny_sd(tmp_path / "sd")), ["cat", "dog"], num_steps=3)
    reward = GuardedReward(AestheticScore(*(str(p) for p in build_tiny_aesthetic(tmp_path))))
    b, m = 2, 3
    generators = lambda: [torch.Generator().manual_seed(i) for i in range(b)]  # noqa: E731
    vae_calls = []
    sd.vae.decoder.register_forward_hook(lambda module, args, out: vae_calls.append(len(out)))
    with torch.no_grad():
        expected = SVDD(PosteriorMeanValue(), m).sample(sd, reward, generators())
    assert vae_calls == [b * m] * sd.num_steps + [b]  # each step's candidates, then the final batch once
    with FakeAccelerator() as accel, torch.no_grad():
        sd.to(accel.device)
        reward.fn.to(accel.device)
        with counting(accel) as traffic:
            result = SVDD(PosteriorMeanValue(), m).sample(sd, reward, generators())
    for a, e in zip(result.samples, expected.samples):
        torch.testing.assert_close(a, e)
    torch.testing.assert_close(result.rewards, expected.rewards)
    final_images = b * 3 * IMAGE_SIZE**2 * 4
    assert traffic.downloaded_bytes <= final_images + 1024, traffic


def test_selection_draws_with_cpu_generators_from_values_on_a_device():
    values = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    generators = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    expected = select_candidates(values, 0.7, generators())
    ancestors = resample(values[0], torch.Generator().manual_seed(1), "systematic")
    with FakeAccelerator() as accel:
        on_device = values.to(accel.device)
        chosen = select_candidates(on_device, 0.7, generators())
        assert isinstance(chosen, OnDevice) and chosen.tolist() == expected.tolist()
        assert torch.equal(resample(on_device[0], torch.Generator().manual_seed(1), "systematic"), ancestors)


def test_the_stand_in_device_catches_what_a_gpu_would():
    """The checks the tests above rely on: mixed devices, CPU generators drawing on the device, numpy."""
    with FakeAccelerator() as accel:
        layer = nn.Linear(3, 2).to(accel.device)
        with pytest.raises(RuntimeError, match="same device"):
            layer(torch.randn(4, 3))
        with pytest.raises(RuntimeError, match="generator"):
            torch.randn(3, generator=torch.Generator(), device=accel.device)
        with pytest.raises(RuntimeError, match="generator"):
            torch.multinomial(torch.ones(3, device=accel.device), 1, generator=torch.Generator())
        with pytest.raises(TypeError, match="numpy"):
            layer.weight.numpy()
        assert layer(torch.randn(4, 3).to(accel.device)).cpu().shape == (4, 2)
        assert torch.randn(5, 3, device=accel.device)[torch.tensor([0, 2])].shape == (2, 3)  # CPU indices are fine


def test_dps_through_the_utr_grus_runs_the_native_kernel_in_eval_mode():
    """cuDNN's RNN backward refuses eval mode: the ConvGRU turns cuDNN off exactly when gradients flow
    through it while frozen (DPS), and leaves it on for scoring and training."""
    from svdd_lightning.domains.utr.networks import ConvGRU

    network = ConvGRU(channels=(4,), hidden=4).eval()
    seen = []
    network.gru.register_forward_pre_hook(lambda module, args: seen.append(torch.backends.cudnn.enabled))
    probs = torch.rand(2, 10, 4).requires_grad_(True)
    network(probs).sum().backward()
    with torch.no_grad():
        network(probs)
    network.train()
    network(probs).sum().backward()
    assert seen == [False, True, True]
