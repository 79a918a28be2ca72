"""Tiny versions of every shipped trainable architecture, and a 2-process DDP job over all of them.

``training_cases()`` gives, per architecture the configs train, a LightningModule and a batch maker.
Run as a script (``python tests/ddp_jobs.py OUT_DIR``) it fits the ``DDP_FIT_CASES`` for 3 steps with
``strategy="ddp"`` on 2 CPU processes (gloo; Lightning relaunches this script for rank 1, and later
Trainers reuse the process group), then decodes tiny molecule and image jobs with every decoder
through ``Trainer.predict``. Each rank writes ``rank<R>.json``: per case a checksum of its trained
weights (equal on both ranks when the gradients were all-reduced), and its decoded rows.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion, MDLMTransformer  # noqa: E402
from svdd_lightning.domains.dna.oracles import ConvClassifier, EnformerStyleClassifier  # noqa: E402
from svdd_lightning.domains.molecules.graph_diffusion import GraphDiffusion  # noqa: E402
from svdd_lightning.domains.molecules.score_networks import (  # noqa: E402
    ScoreNetworkA, ScoreNetworkX, ScoreNetworkX_GMH)
from svdd_lightning.domains.molecules.sde import VESDE, VPSDE  # noqa: E402
from svdd_lightning.domains.molecules.value_networks import GraphGIN  # noqa: E402
from svdd_lightning.domains.utr.networks import ConvGRU  # noqa: E402

N_NODES, ATOMS = 6, ("C", "N", "O", "F")


class Items(Dataset):
    """``n`` items made by ``make(generator)``, the same on every rank (seeded by the item index)."""

    def __init__(self, make: Callable[[torch.Generator], tuple], n: int = 16) -> None:
        self.items = [make(torch.Generator().manual_seed(i)) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        return self.items[i]


def tokens(symbols: int, length: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randint(0, symbols, (length,), generator=g)


def graph(g: torch.Generator) -> dict[str, torch.Tensor]:
    size = int(torch.randint(2, N_NODES + 1, (), generator=g))
    flags = (torch.arange(N_NODES) < size).float()
    adj = torch.randn(N_NODES, N_NODES, generator=g).triu(1)
    adj = (adj + adj.T) * flags[:, None] * flags[None]
    return {"x": torch.randn(N_NODES, len(ATOMS), generator=g) * flags[:, None], "adj": adj, "flags": flags}


def value_item(make_x: Callable) -> Callable[[torch.Generator], tuple]:
    """(x_t, t, r) rollout pairs, as RolloutDataModule gives them."""
    return lambda g: (make_x(g), torch.rand((), generator=g), torch.randn((), generator=g))


def tiny_graph_diffusion(gmh: bool = False) -> GraphDiffusion:
    x_net = (ScoreNetworkX_GMH(len(ATOMS), depth=2, nhid=8, num_linears=2, c_init=2, c_hid=4, c_final=2, adim=8,
                               num_heads=2) if gmh else ScoreNetworkX(len(ATOMS), depth=2, nhid=8))
    adj_net = ScoreNetworkA(len(ATOMS), N_NODES, nhid=8, num_layers=3, num_linears=2, c_init=2, c_hid=4, c_final=2,
                            adim=8, num_heads=2)
    return GraphDiffusion(x_net, adj_net, VPSDE() if gmh else VESDE(), VESDE(), ATOMS, N_NODES,
                          [0.0, 0.2, 0.2, 0.2, 0.2, 0.2], num_steps=4)


def tiny_unet_model():
    from svdd_lightning.domains.images.diffusers_model import DiffusersDiffusion

    unet = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 8], layers_per_block=1,
                down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
                norm_num_groups=4)
    scheduler = {"_class_name": "DDIMScheduler", "num_train_timesteps": 100}
    return DiffusersDiffusion(unet, scheduler, num_steps=3)


def training_cases() -> dict[str, tuple[Callable, Callable[[torch.Generator], tuple]]]:
    """name -> (LightningModule factory, item maker) for every shipped architecture the configs train."""
    from svdd_lightning.domains.images.networks import ImageValueCNN, MNISTClassifier
    from svdd_lightning.domains.images.training import DenoisingPretraining, ImageClassifierTraining
    from svdd_lightning.domains.molecules.training import GraphScorePretraining
    from svdd_lightning.domains.sequences.training import MaskedDiffusionPretraining, SequenceClassifierTraining
    from svdd_lightning.lightning.training import RegressorTraining, ValueRegression

    def enformer(**kw):
        return EnformerStyleClassifier(seq_len=16, stem_channels=8, stem_pool=2, tower_channels=(8,),
                                       num_transformer_layers=1, num_heads=2, **kw)

    image = lambda g: torch.rand(1, 8, 8, generator=g)  # noqa: E731
    return {
        # SVDD-MC value networks (ValueRegression on rollouts), one per shipped architecture
        "value_dna_enformer": (lambda: ValueRegression(enformer(input_symbols=5, time_conditioning=True)),
                               value_item(tokens(5, 16))),
        "value_utr_convgru": (lambda: ValueRegression(ConvGRU(channels=(8,), hidden=8, input_symbols=5,
                                                              time_conditioning=True)), value_item(tokens(5, 12))),
        "value_molecule_gin": (lambda: ValueRegression(GraphGIN(len(ATOMS), hidden=16, num_layers=2, time_dim=8)),
                               value_item(graph)),
        "value_image_cnn": (lambda: ValueRegression(ImageValueCNN(channels=(8, 8), time_dim=8)), value_item(image)),
        # pretrained models and oracles
        "gdss_qm9_networks": (lambda: GraphScorePretraining(tiny_graph_diffusion()),
                              lambda g: tuple(graph(g).values())),
        "gdss_gmh_networks": (lambda: GraphScorePretraining(tiny_graph_diffusion(gmh=True)),
                              lambda g: tuple(graph(g).values())),
        "mdlm_conv": (lambda: MaskedDiffusionPretraining(
            MaskedDiffusion(DilatedConvDenoiser(4, channels=8, dilations=(1, 2)), "ACGT", 12)),
            lambda g: (tokens(4, 12)(g), torch.zeros(()))),
        "mdlm_dit": (lambda: MaskedDiffusionPretraining(
            MaskedDiffusion(MDLMTransformer(5, hidden_size=8, cond_dim=8, n_blocks=1, n_heads=2), "ACGT", 12)),
            lambda g: (tokens(4, 12)(g), torch.zeros(()))),
        "oracle_enformer": (lambda: SequenceClassifierTraining(enformer()),
                            lambda g: (tokens(4, 16)(g), torch.randint(0, 2, (), generator=g).float())),
        "oracle_conv": (lambda: SequenceClassifierTraining(ConvClassifier(channels=(8,), kernel_sizes=(5,), hidden=8)),
                        lambda g: (tokens(4, 16)(g), torch.randint(0, 2, (), generator=g).float())),
        "oracle_convgru": (lambda: RegressorTraining(ConvGRU(channels=(8,), hidden=8)),
                           lambda g: (tokens(4, 12)(g), torch.randn((), generator=g))),
        "ddpm_unet": (lambda: DenoisingPretraining(tiny_unet_model(), warmup_steps=1),
                      lambda g: (image(g) * 2 - 1, torch.zeros((), dtype=torch.long))),
        "classifier_mnist": (lambda: ImageClassifierTraining(MNISTClassifier(channels=(8, 8))),
                             lambda g: (image(g), torch.randint(0, 10, (), generator=g))),
    }


#: what the DDP job fits: the value networks and GDSS's score networks (the cases whose parameters once went
#: without gradients); the in-process gradient test covers every case
DDP_FIT_CASES = ("value_dna_enformer", "value_utr_convgru", "value_molecule_gin", "value_image_cnn",
                 "gdss_qm9_networks", "gdss_gmh_networks")


def decoding_modules() -> dict[str, Callable]:
    """Tiny molecule and image decode jobs with every decoder (DPS through a differentiable proxy)."""
    from svdd_lightning import DPS, SMC, SVDD, BestOfN, NetworkValue, PosteriorMeanValue, PretrainedSampling
    from svdd_lightning.core.reward import FunctionReward, ProxyGuided
    from svdd_lightning.domains.images.networks import ImageValueCNN
    from svdd_lightning.lightning.decoding import DecodingModule

    def methods(value_net) -> dict:
        return {"pretrained": PretrainedSampling(), "best_of_n": BestOfN(2),
                "svdd_pm": SVDD(PosteriorMeanValue(), 2), "svdd_mc": SVDD(NetworkValue(value_net), 2),
                "smc": SMC(PosteriorMeanValue(), alpha=0.5), "dps": DPS(scale=0.5)}

    def molecules() -> DecodingModule:
        torch.manual_seed(0)
        gin = GraphGIN(len(ATOMS), hidden=8, num_layers=2, time_dim=8).eval()
        reward = ProxyGuided(FunctionReward(smiles_length), GraphGIN(len(ATOMS), hidden=8, num_layers=2, time_dim=8))
        return DecodingModule(tiny_graph_diffusion().eval(), reward, methods(gin))

    def images() -> DecodingModule:
        torch.manual_seed(0)
        value = ImageValueCNN(channels=(4,), time_dim=8).eval()
        reward = ProxyGuided(FunctionReward(mean_brightness), ImageValueCNN(channels=(4,), time_dim=8))
        return DecodingModule(tiny_unet_model().eval(), reward, methods(value))

    return {"molecules": molecules, "images": images}


def smiles_length(smiles: list[str]) -> list[float]:
    return [float(len(s)) for s in smiles]


def mean_brightness(images: list[torch.Tensor]) -> list[float]:
    return [float(image.mean()) for image in images]


def checksum(module: torch.nn.Module) -> float:
    return float(sum(p.double().sum() * (i + 1) for i, p in enumerate(module.parameters())))


def main(out: Path) -> None:
    import lightning as L

    from svdd_lightning.lightning.decoding import SampleIndexDataModule

    accelerator = os.environ.get("SVDD_DDP_ACCELERATOR", "cpu")  # benchmarks/gpu.sh runs it on 2 GPUs
    trainer_args = dict(accelerator=accelerator, devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    record: dict = {"fit": {}, "predict": {}}
    cases = training_cases()
    for name in DDP_FIT_CASES:
        build, make = cases[name]
        L.seed_everything(0, verbose=False)
        module = build()
        trainer = L.Trainer(max_steps=3, limit_val_batches=0, num_sanity_val_steps=0, **trainer_args)
        trainer.fit(module, DataLoader(Items(make), batch_size=4))
        record["fit"][name] = {"steps": trainer.global_step, "checksum": checksum(module)}
    for name, build in decoding_modules().items():
        trainer = L.Trainer(inference_mode=False, **trainer_args)
        batches = trainer.predict(build(), SampleIndexDataModule(num_samples=4, batch_size=2))
        record["predict"][name] = [row for batch in batches for row in batch["rows"]]
        for row in record["predict"][name]:
            row["sample"] = row["sample"] if isinstance(row["sample"], str) else float(row["sample"].sum())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
