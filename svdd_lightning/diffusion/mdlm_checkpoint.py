"""Load a published MDLM (kuleshov-group/mdlm) checkpoint as a :class:`MaskedDiffusion`.

MDLM trains with PyTorch Lightning; its ``.ckpt`` holds ``state_dict`` (the backbone's weights under
``backbone.``), ``ema`` (``{"decay", "num_updates", "shadow_params"}``, the shadow list following
``backbone.parameters()`` then the noise schedule's parameters) and ``hyper_parameters`` (the
Hydra config and the tokenizer). Files are read with ``torch.load(weights_only=True)`` only, so
a checkpoint cannot run code; an original MDLM file fails that because its hyper-parameters are
pickled OmegaConf and tokenizer objects. Convert such a file once, on a machine where you trust it::

    ckpt = torch.load("mdlm.ckpt", weights_only=False)   # only for a file you trust
    torch.save({"state_dict": ckpt["state_dict"], "ema": ckpt.get("ema")}, "mdlm_weights.ckpt")

and pass the ``model`` section of its MDLM config (plus ``time_conditioning``) as ``model_config``:
``{"n_heads": 12, "time_conditioning": False}``. Sizes that the weights fix (hidden size, vocab,
cond_dim, number of blocks) are read from the tensors; ``n_heads`` cannot be and defaults to 12
(MDLM ``small``).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from ..checkpoints import copy_ema_shadow
from .dit import MDLMTransformer
from .masked import MaskedDiffusion

DEFAULT_N_HEADS = 12  # MDLM "small" (configs/model/small.yaml)
PREFIX = "backbone."


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise ValueError(
                f"MDLM checkpoint {path} contains pickled objects ({found.group(1)}; MDLM stores its config as "
                f"OmegaConf) that are not loaded for safety: if you trust the file, re-save only its tensors with "
                f"c = torch.load(src, weights_only=False); torch.save({{'state_dict': c['state_dict'], "
                f"'ema': c.get('ema')}}, dst) and pass model_config=<the model section of its MDLM config>") from None
        detail = next((line.strip() for line in str(err).splitlines() if line.strip().startswith("Unsupported")),
                      "unpickling failed")
        raise ValueError(f"MDLM checkpoint {path} is not a readable torch checkpoint: {detail}") from None
    except RuntimeError as err:
        raise ValueError(f"MDLM checkpoint {path} is not a readable torch checkpoint: "
                         f"{str(err).splitlines()[0]}") from None


def _backbone_state(ckpt: Any, path: Path) -> dict[str, torch.Tensor]:
    """The DIT weights, prefix removed, from a Lightning checkpoint or a bare state dict."""
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"MDLM checkpoint {path} holds no state_dict")
    backbone = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not backbone and "vocab_embed.embedding" in state:
        backbone = dict(state)
    if "vocab_embed.embedding" not in backbone:
        raise ValueError(f"MDLM checkpoint {path} has no backbone.vocab_embed.embedding: not an MDLM DIT checkpoint")
    return backbone


def _hyper_config(ckpt: Any) -> dict:
    """The MDLM run config from ``hyper_parameters`` when it was stored as plain containers."""
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    if not isinstance(hparams, Mapping):
        return {}
    config = hparams.get("config", hparams)
    return dict(config) if isinstance(config, Mapping) else {}


def _architecture(state: Mapping[str, torch.Tensor], model: Mapping, path: Path) -> dict:
    vocab, hidden = state["vocab_embed.embedding"].shape
    try:
        cond_dim = state["sigma_map.mlp.2.weight"].shape[0]
    except KeyError:
        raise ValueError(f"MDLM checkpoint {path} has no backbone.sigma_map.mlp.2.weight: not an MDLM DIT "
                         f"checkpoint") from None
    n_blocks = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    arch = {"vocab_size": int(vocab), "hidden_size": int(hidden), "cond_dim": int(cond_dim), "n_blocks": n_blocks}
    for key, value in arch.items():
        if key != "vocab_size" and key in model and int(model[key]) != value:
            raise ValueError(f"MDLM checkpoint {path}: model_config says {key}={model[key]} but the weights "
                             f"have {key}={value}")
    arch["n_heads"] = int(model.get("n_heads", DEFAULT_N_HEADS))
    if hidden % arch["n_heads"]:
        raise ValueError(f"MDLM checkpoint {path}: hidden_size {hidden} is not divisible by n_heads {arch['n_heads']}")
    arch["dropout"] = float(model.get("dropout", 0.1))
    return arch


def load_mdlm_checkpoint(path: str, alphabet: str, seq_len: int, num_steps: int = 128, use_ema: bool = True,
                         model_config: dict | None = None) -> MaskedDiffusion:
    """An MDLM DIT checkpoint as a :class:`MaskedDiffusion` over ``alphabet`` (+ mask), in eval mode.

    ``model_config`` is the ``model`` section of the MDLM config (``n_heads``, ``dropout``, ...,
    optionally ``time_conditioning`` from the top level); it overrides ``hyper_parameters`` and
    is needed when those could not be stored as plain data. The MDLM vocab must be
    ``len(alphabet) + 1`` with the mask token last. With ``use_ema`` the EMA weights are used
    when the checkpoint has them (as MDLM evaluates).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"MDLM checkpoint not found: {file}")
    ckpt = _read(file)
    state = _backbone_state(ckpt, file)
    config = _hyper_config(ckpt)
    model = {**(config.get("model") or {}), **(model_config or {})}
    for key, expected in (("backbone", "dit"), ("parameterization", "subs")):
        if key in config and config[key] != expected:
            raise ValueError(f"MDLM checkpoint {file} was trained with {key}={config[key]!r}; only {expected!r} loads")

    arch = _architecture(state, model, file)
    if arch["vocab_size"] != len(alphabet) + 1:
        raise ValueError(f"MDLM checkpoint {file} has vocab size {arch['vocab_size']} but alphabet {alphabet!r} "
                         f"needs {len(alphabet) + 1} (its {len(alphabet)} symbols + mask)")
    backbone = MDLMTransformer(**arch)
    expected_keys = set(backbone.state_dict())
    state.setdefault("rotary_emb.inv_freq", backbone.rotary_emb.inv_freq)  # a fixed table; older files may omit it
    missing, unexpected = sorted(expected_keys - set(state)), sorted(set(state) - expected_keys)
    if missing or unexpected:
        raise ValueError(f"MDLM checkpoint {file} does not match an MDLM DIT: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise ValueError(f"MDLM checkpoint {file}: {detail}") from None

    ema = ckpt.get("ema") if isinstance(ckpt, Mapping) else None
    if use_ema and isinstance(ema, Mapping):
        # MDLM's EMA covers backbone.parameters() then noise.parameters(); the latter (if any) come last
        copy_ema_shadow([p for p in backbone.parameters() if p.requires_grad], ema,
                        f"MDLM checkpoint {file}: ema", exact=False)

    time_conditioning = bool(model.get("time_conditioning", config.get("time_conditioning", False)))
    diffusion = MaskedDiffusion(backbone, alphabet, seq_len, num_steps, time_conditioning=time_conditioning)
    return diffusion.eval()
