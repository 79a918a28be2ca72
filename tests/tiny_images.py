"""Tiny random image models in the layouts users have on disk: a Stable Diffusion pipeline folder and the
LAION aesthetic predictor's weights (nothing downloaded)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

VAE_BLOCKS, LATENT_SIZE = [4, 8], 8
IMAGE_SIZE = LATENT_SIZE * 2 ** (len(VAE_BLOCKS) - 1)  # the VAE upsamples by 2 between blocks: 16
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}

def build_tiny_sd(root: Path) -> Path:
    """A tiny random Stable Diffusion in diffusers layout, with SD 1.5's (PNDM) scheduler config."""
    torch.manual_seed(0)
    UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=LATENT_SIZE, in_channels=4,
                         out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                         norm_num_groups=2).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=VAE_BLOCKS, in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                  ).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
                                 vocab_size=60, max_position_embeddings=12, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(root / "text_encoder")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter], vocab[letter + "</w>"] = len(vocab), len(vocab) + 1
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=12).save_pretrained(
        root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER))
    return root


def random_aesthetic_predictor(projection_dim: int) -> dict[str, torch.Tensor]:
    """A random state dict with the published predictor's keys (MLP projection_dim -> 1024 -> 128 -> 64 -> 16 -> 1)."""
    sizes = [(projection_dim, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    state = {}
    for index, (n_in, n_out) in zip((0, 2, 4, 6, 7), sizes):
        state[f"layers.{index}.weight"] = torch.randn(n_out, n_in) / n_in ** 0.5
        state[f"layers.{index}.bias"] = torch.randn(n_out)
    return state


def save_tiny_clip_tokenizer(folder: Path, max_length: int = 12) -> Path:
    """A CLIP tokenizer over single letters (ids: start 0, end 1, then each letter and its word-final form)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter], vocab[letter + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length).save_pretrained(
        folder)
    return folder


SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def build_tiny_sd3(root: Path, t5: bool = True) -> Path:
    """A tiny random Stable Diffusion 3 in diffusers layout (SD3's components and scheduler config, tiny widths):
    CLIP-L and CLIP-G text encoders with projections, optionally a T5 encoder and a word-level tokenizer."""
    from diffusers import SD3Transformer2DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast, T5Config, T5EncoderModel

    torch.manual_seed(0)
    SD3Transformer2DModel(sample_size=LATENT_SIZE, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                          attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                          joint_attention_dim=32, pooled_projection_dim=16, pos_embed_max_size=16,
                          ).save_pretrained(root / "transformer")
    AutoencoderKL(block_out_channels=VAE_BLOCKS, in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                  scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
                  ).save_pretrained(root / "vae")
    for index, seed in (("", 1), ("_2", 2)):
        torch.manual_seed(seed)
        CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2, vocab_size=60,
            max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=8,
        )).save_pretrained(root / f"text_encoder{index}")
        save_tiny_clip_tokenizer(root / f"tokenizer{index}")
    if t5:
        torch.manual_seed(3)
        T5EncoderModel(T5Config(vocab_size=40, d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4)
                       ).save_pretrained(root / "text_encoder_3")
        words = ["<pad>", "</s>", "<unk>", "a", "cat", "red", "dog", "blue", "sky"]
        tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                ).save_pretrained(root / "tokenizer_3")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD3_SCHEDULER))
    return root


FLUX_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
                  "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                  "max_image_seq_len": 4096}


def build_tiny_flux(root: Path) -> Path:
    """A tiny random Flux dev in diffusers layout (guidance embedding, CLIP + T5, Flux's scheduler config)."""
    from diffusers import FluxTransformer2DModel

    build_tiny_sd3(root / "sd3")  # reuse its VAE, CLIP tokenizer and T5 encoder folders
    torch.manual_seed(4)
    FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=8,
                           guidance_embeds=True, axes_dims_rope=(4, 4, 8)).save_pretrained(root / "transformer")
    for source, target in (("vae", "vae"), ("tokenizer", "tokenizer"), ("tokenizer_3", "tokenizer_2"),
                           ("text_encoder_3", "text_encoder_2")):
        (root / "sd3" / source).rename(root / target)
    torch.manual_seed(1)
    CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
                                 vocab_size=60, max_position_embeddings=12, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(root / "text_encoder")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(FLUX_SCHEDULER))
    return root
