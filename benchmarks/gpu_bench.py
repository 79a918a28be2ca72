"""The GPU benchmark's work (``benchmarks/gpu.sh`` installs what is missing and runs this).

    python benchmarks/gpu_bench.py --out runs/gpu_benchmark            # on a GPU: the shipped DNA models
    python benchmarks/gpu_bench.py --out /tmp/gpu_tiny --tiny          # tiny random models, on the CPU too

Sections, each timed and written to ``<out>/gpu_benchmark.json`` as it finishes:

1. ``dna_job``: ``decode.py predict`` on configs/dna/compare.yaml at batch 256 (256 samples) in 32-true and
   bf16-mixed: samples/s per method and SVDD-PM's wall time over M x pretrained sampling's.
2. ``head_to_head``: SVDD-PM (M = 10) through the Python API against benchmarks/official_style.py (the
   published DNA loop's structure) on the same model, oracle and batch: samples/s and their ratio.
3. ``stable_diffusion``: SVDD-PM with M = 20 and DDIM 50 on Stable Diffusion 1.5-shaped components (UNet,
   VAE, CLIP ViT-L/14 text and vision towers from their published configs, random weights, fp16 on a GPU)
   and the aesthetic predictor's shape: seconds per image and peak GPU memory, every step's B x M candidates
   in one UNet call (2 B M rows with guidance), one VAE call and one CLIP call (chunk_size = B x M).
4. ``sd3``: SVDD-PM with M = 8 on the SDE (noise level 0.7) of 28 steps of Stable Diffusion 3 Medium-shaped
   components (the MMDiT transformer, 16-channel VAE, CLIP-L and CLIP-G text towers from the published
   configs, random weights, fp16 on a GPU; no T5, whose embeddings are then zeros as in diffusers' pipeline)
   at 512 x 512, with the aesthetic reward: the largest batch of 8, 4, 2, 1 images that fits, its seconds per
   image and peak GPU memory.
5. ``ddp_fit``: the 2-process DDP fit and decode job of tests/ddp_jobs.py on 2 GPUs, when there are 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from svdd_lightning.threads import configure_threads, machine_record  # noqa: E402

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4,
                layers_per_block=2, sample_size=512, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                     max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu")
CLIP_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                       image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Report:
    def __init__(self, out: Path, tiny: bool, device: torch.device) -> None:
        self.path = out / "gpu_benchmark.json"
        out.mkdir(parents=True, exist_ok=True)
        self.data = {"tiny": tiny, "device": str(device), "machine": machine_record(processes=1),
                     "gpus": torch.cuda.device_count(), "cuda": torch.version.cuda, "sections": {}}
        self.write()

    def section(self, name: str, value: dict) -> None:
        self.data["sections"][name] = value
        self.write()
        print(f"\n== {name}\n{json.dumps(value, indent=1)}", flush=True)

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def timed_decode(decoder: Any, model: Any, reward: Any, images: int, device: torch.device) -> tuple[Any, float]:
    """``decoder`` on ``images`` seeded samples, and its wall seconds (device work synchronised)."""
    from svdd_lightning.core.reward import GuardedReward

    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        result = decoder.sample(model, GuardedReward(reward), [torch.Generator().manual_seed(i) for i in range(images)],
                                list(range(images)))
        sync(device)
        return result, time.perf_counter() - t0


def dna_paths(tiny: bool, work: Path) -> dict[str, Path]:
    if not tiny:
        return {k: ROOT / "checkpoints" / "dna" / v for k, v in
                (("mdlm", "mdlm"), ("reward", "oracle_reward"), ("eval", "oracle_eval"), ("value", "value_mc"))}
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_dna import build_tiny_checkpoints

    return build_tiny_checkpoints(work / "tiny_dna")


def dna_job(paths: dict, tiny: bool, batch: int, accelerator: str, out: Path) -> dict:
    from svdd_lightning.lightning.cli import main_decode

    result = {}
    for precision in ("32-true", "bf16-mixed"):
        run_dir = out / f"dna_job_{precision}"
        args = ["predict", "--config", "configs/dna/compare.yaml", "--output_dir", str(run_dir),
                "--data.num_samples", str(batch), "--data.batch_size", str(batch),
                "--trainer.accelerator", accelerator, "--trainer.precision", precision,
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
        if tiny:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_dna import decode_args

            args = decode_args(paths, run_dir, *args[5:])
        start = time.perf_counter()
        main_decode(args)
        summary = json.loads((run_dir / "summary.json").read_text())
        m = 3 if tiny else 10
        pre = summary["pretrained"]["wall_seconds"]
        result[precision] = {
            "total_seconds": round(time.perf_counter() - start, 2),
            "samples_per_second": {k: round(v["samples_per_second"], 2) for k, v in summary.items()},
            "reward_median": {k: v["reward"]["median"] for k, v in summary.items()},
            "svdd_pm_over_m_pretrained_wall": summary["svdd_pm"]["wall_seconds"] / (m * pre),
            "num_candidates": m}
    return result


def head_to_head(paths: dict, tiny: bool, batch: int, device: torch.device) -> dict:
    from official_style import official_style_svdd

    from svdd_lightning import SVDD, PosteriorMeanValue, checkpoints
    from svdd_lightning.core.reward import GuardedReward
    from svdd_lightning.domains.sequences.oracle import OracleReward

    model = checkpoints.load(paths["mdlm"]).eval().requires_grad_(False).to(device)
    oracle = OracleReward(str(paths["reward"])).to(device)
    m = 3 if tiny else 10
    decoder, reward = SVDD(PosteriorMeanValue(), m), GuardedReward(oracle)

    def ours():
        decoder.sample(model, reward, [torch.Generator().manual_seed(i) for i in range(batch)])

    def theirs():
        official_style_svdd(model, oracle.network, batch, m)

    timings = {}
    with torch.inference_mode():
        for name, fn in (("svdd_lightning", ours), ("official_style", theirs)):
            fn() if not tiny else None  # warm-up (cuDNN autotuning, allocator)
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            timings[name] = time.perf_counter() - start
    return {"batch": batch, "num_candidates": m, "num_steps": model.num_steps,
            "samples_per_second": {k: round(batch / v, 3) for k, v in timings.items()},
            "ratio": timings["official_style"] / timings["svdd_lightning"]}


def build_sd(folder: Path, tiny: bool) -> tuple[Path, Path, Path]:
    """An SD 1.5-shaped pipeline folder, a CLIP ViT-L/14 vision folder and aesthetic weights, random."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_images import build_tiny_sd, random_aesthetic_predictor

    torch.manual_seed(0)
    if tiny:
        sd = build_tiny_sd(folder / "sd")
        vision = dict(projection_dim=12, hidden_size=8, intermediate_size=16, num_attention_heads=2,
                      num_hidden_layers=1, image_size=30, patch_size=10)
    else:
        sd = folder / "sd"
        UNet2DConditionModel(**SD15_UNET).half().save_pretrained(sd / "unet")
        AutoencoderKL(**SD15_VAE).half().save_pretrained(sd / "vae")
        CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT, bos_token_id=0, eos_token_id=1, pad_token_id=1)).half() \
            .save_pretrained(sd / "text_encoder")
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
        for letter in "abcdefghijklmnopqrstuvwxyz":
            vocab[letter], vocab[letter + "</w>"] = len(vocab), len(vocab) + 1
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77) \
            .save_pretrained(sd / "tokenizer")
        (sd / "scheduler").mkdir(parents=True, exist_ok=True)
        (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER))
        vision = CLIP_L14_VISION
    CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).save_pretrained(folder / "clip")
    torch.save(random_aesthetic_predictor(vision["projection_dim"]), folder / "predictor.pth")
    return sd, folder / "clip", folder / "predictor.pth"


def stable_diffusion(work: Path, tiny: bool, device: torch.device, images: int) -> dict:
    from svdd_lightning import SVDD, PosteriorMeanValue
    from svdd_lightning.domains.images.diffusers_model import StableDiffusion
    from svdd_lightning.domains.images.rewards import AestheticScore

    start = time.perf_counter()
    sd_path, clip, predictor = build_sd(work / "sd_components", tiny)
    steps, m = (3, 2) if tiny else (50, 20)
    model = StableDiffusion(str(sd_path), ["cat", "dog", "horse", "monkey"], num_steps=steps).to(device)
    reward = AestheticScore(str(clip), str(predictor)).to(device)
    half = device.type == "cuda"
    if half:  # fp16 weights on the GPU: the UNet, the VAE and CLIP
        model.unet.half(), model.vae.half(), reward.clip.half()
    built = time.perf_counter() - start
    chunk = images * m
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    decoder = SVDD(PosteriorMeanValue(), m, chunk_size=chunk)
    result, seconds = timed_decode(decoder, model, reward, images, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images": images, "num_candidates": m, "ddim_steps": steps, "chunk_size": chunk, "fp16": half,
            "seconds_per_image": seconds / images, "peak_memory_gib": peak, "build_seconds": round(built, 1),
            "denoiser_calls_per_image": result.stats.denoiser_calls / images,
            "aesthetic_median": float(result.rewards.median())}


SD3_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                       attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                       caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
SD3_VAE = dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=16,
               layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)
CLIP_G14_TEXT = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                     max_position_embeddings=77, vocab_size=49408, projection_dim=1280, hidden_act="gelu")


def build_sd3(folder: Path, tiny: bool, device: torch.device) -> Path:
    """An SD3 Medium-shaped pipeline folder with random weights (built on ``device``), or the tests' tiny one."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_images import SD3_SCHEDULER, build_tiny_sd3, save_tiny_clip_tokenizer

    if tiny:
        return build_tiny_sd3(folder, t5=False)
    torch.manual_seed(0)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        SD3Transformer2DModel(**SD3_TRANSFORMER).to(dtype).save_pretrained(folder / "transformer")
        AutoencoderKL(**SD3_VAE).to(dtype).save_pretrained(folder / "vae")
        for index, config in (("", CLIP_L14_TEXT), ("_2", CLIP_G14_TEXT)):
            CLIPTextModelWithProjection(CLIPTextConfig(**config, bos_token_id=0, eos_token_id=1, pad_token_id=1)) \
                .to(dtype).save_pretrained(folder / f"text_encoder{index}")
            save_tiny_clip_tokenizer(folder / f"tokenizer{index}", max_length=77)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD3_SCHEDULER))
    return folder


def sd3(work: Path, tiny: bool, device: torch.device) -> dict:
    from svdd_lightning import SVDD, PosteriorMeanValue
    from svdd_lightning.domains.images.flow_pipelines import StableDiffusion3
    from svdd_lightning.domains.images.rewards import AestheticScore

    start = time.perf_counter()
    path = build_sd3(work / "sd3_components", tiny, device)
    clip, predictor = work / "sd_components" / "clip", work / "sd_components" / "predictor.pth"
    if not clip.exists():
        _, clip, predictor = build_sd(work / "sd_components", tiny)
    steps, m, height = (3, 2, None) if tiny else (28, 8, 512)
    model = StableDiffusion3(str(path), ["cat", "dog", "horse", "monkey"], num_steps=steps, height=height,
                             noise_level=0.7).to(device)
    reward = AestheticScore(str(clip), str(predictor)).to(device)
    half = device.type == "cuda"
    if half:  # fp16 weights on the GPU: the transformer, the VAE and CLIP
        model.transformer.half(), model.vae.half(), reward.clip.half()
    built = time.perf_counter() - start
    tried = {}
    for images in ((2,) if tiny else (8, 4, 2, 1)):
        decoder = SVDD(PosteriorMeanValue(), m, chunk_size=images * m)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            result, seconds = timed_decode(decoder, model, reward, images, device)
        except torch.OutOfMemoryError:
            tried[images] = "out of memory"
            continue
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        return {"images": images, "num_candidates": m, "steps": steps, "noise_level": 0.7, "fp16": half,
                "height": height, "t5": False, "too_large": tried,
                "seconds_per_image": seconds / images, "peak_memory_gib": peak, "build_seconds": round(built, 1),
                "denoiser_calls_per_image": result.stats.denoiser_calls / images,
                "aesthetic_median": float(result.rewards.median())}
    return {"error": f"no batch fits: {tried}"}


def ddp_fit(out: Path) -> dict:
    import subprocess

    env = {**os.environ, "SVDD_DDP_ACCELERATOR": "gpu", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_jobs.py"), str(out / "ddp")], env=env,
                         capture_output=True, text=True, timeout=300)
    return {"returncode": res.returncode, "seconds": round(time.perf_counter() - start, 1),
            "stderr_tail": res.stderr[-1500:] if res.returncode else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny random models (runs on a CPU)")
    parser.add_argument("--batch", type=int, default=None, help="DNA batch (default 256; tiny 4)")
    parser.add_argument("--sd-images", type=int, default=None, help="images per SD batch (default 4; tiny 2)")
    parser.add_argument("--skip", nargs="*", default=[], help="sections to skip")
    args = parser.parse_args()
    out = Path(args.out)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    configure_threads()
    report = Report(out, args.tiny, device)
    batch = args.batch or (4 if args.tiny else 256)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = dna_paths(args.tiny, work)
        sections = {
            "dna_job": lambda: dna_job(paths, args.tiny, batch, "gpu" if cuda else "cpu", out),
            "head_to_head": lambda: head_to_head(paths, args.tiny, batch, device),
            "stable_diffusion": lambda: stable_diffusion(work, args.tiny, device, args.sd_images or (2 if args.tiny else 4)),
            "sd3": lambda: sd3(work, args.tiny, device),
        }
        if torch.cuda.device_count() >= 2:
            sections["ddp_fit"] = lambda: ddp_fit(out)
        for name, run in sections.items():
            if name in args.skip:
                continue
            start = time.perf_counter()
            try:
                value = run()
            except Exception as err:  # one failing section must not lose the others' figures
                value = {"error": f"{type(err).__name__}: {err}"}
            value["section_seconds"] = round(time.perf_counter() - start, 1)
            report.section(name, value)
    print(f"\nwritten: {report.path}")


if __name__ == "__main__":
    main()
