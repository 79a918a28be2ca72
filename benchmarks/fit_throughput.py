"""Benchmark of SVDD-MC's training side: value-network regression throughput on 1 and 2 processes,
and the rollout generation throughput of the frozen pretrained model.

    python benchmarks/fit_throughput.py                     # CPU, 1 and 2 processes, about a minute
    python benchmarks/fit_throughput.py --accelerator gpu   # GPU(s): 1, and 2 when there are two
    python benchmarks/fit_throughput.py --devices 1,2 --steps 200 --batch-size 128

Regression: ``ValueRegression(EnformerStyleClassifier(seq_len=200, input_symbols=5,
time_conditioning=True))`` fitted by ``L.Trainer(devices=N, strategy="ddp" if N > 1 else "auto",
max_steps=S, use_distributed_sampler=False)`` on synthetic (x_t, t, reward) batches: random
tokens over A, C, G, T masked (id 4) with probability t ~ U(0, 1), one synthetic dataset per rank.
The first ``--warmup`` steps are not timed. Reported: optimizer steps/s (every rank takes the same
steps) and samples/s over all ranks (steps/s x batch size x N).

Rollouts: ``PretrainedSampling().sample(model, lambda s: [0.0] * len(s), generators)`` with
``--rollouts`` generators on ``checkpoints/dna/mdlm`` (a random model of the same shape when that
directory is missing; the output says so), in one process. These are the rollouts whose
(x_t, t, r(x_0)) tuples the value network regresses on.

Each configuration runs in a subprocess of this script (DDP relaunches it for rank 1), with
``OMP_NUM_THREADS=1`` per process on CPU, so 2 processes use 2 cores. Writes
``benchmarks/results/fit_throughput_<accelerator>.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MASK = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--devices", default=None,
                        help="comma-separated process counts (default: 1,2 on CPU; 1 and 2 if two GPUs on GPU)")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=20, help="first steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--seq-len", type=int, default=200)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--rollouts", type=int, default=64, help="0 skips the rollout measurement")
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "dna" / "mdlm"))
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads per process on CPU")
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/fit_throughput_<accelerator>.json)")
    parser.add_argument("--worker", choices=["fit", "rollout"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be smaller than --steps ({args.steps})")

    if args.worker == "fit":
        _fit_worker(args)
    elif args.worker == "rollout":
        _rollout_worker(args)
    else:
        _driver(args)


# --- driver ---------------------------------------------------------------------------------------
def _driver(args: argparse.Namespace) -> None:
    import torch

    if args.devices is None:
        gpus = torch.cuda.device_count() if args.accelerator == "gpu" else 2
        devices = [1, 2] if gpus >= 2 else [1]
    else:
        devices = [int(d) for d in args.devices.split(",")]
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        sys.exit("error: --accelerator gpu but CUDA is not available")

    started = time.time()
    fit = {}
    for n in devices:
        print(f"regression: {n} process(es) on {args.accelerator} ...", flush=True)
        fit[str(n)] = _run_worker(args, "fit", n)
    rollout = None
    if args.rollouts > 0:
        print(f"rollouts: {args.rollouts} on {args.accelerator} ...", flush=True)
        rollout = _run_worker(args, "rollout", 1)

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_at_start": _load_average(), "torch": torch.__version__,
                    "accelerator": args.accelerator, "threads_per_process": args.threads if args.accelerator == "cpu" else None,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "regression": {"network": "EnformerStyleClassifier(seq_len=%d, input_symbols=5, time_conditioning=True)" % args.seq_len,
                       "batch_size_per_process": args.batch_size, "steps": args.steps, "timed_steps": args.steps - args.warmup,
                       "precision": args.precision, "by_devices": fit},
        "rollouts": rollout,
        "total_seconds": round(time.time() - started, 1),
    }
    if "1" in fit and "2" in fit and "error" not in fit["1"] and "error" not in fit["2"]:
        result["regression"]["speedup_2_over_1_samples_per_second"] = (
            fit["2"]["samples_per_second"] / fit["1"]["samples_per_second"])
    path = Path(args.output) if args.output else ROOT / "benchmarks" / "results" / f"fit_throughput_{args.accelerator}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    _print_table(result)
    print(f"written: {path}")


def _run_worker(args: argparse.Namespace, worker: str, devices: int) -> dict:
    import tempfile

    env = dict(os.environ)
    for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
        env.pop(key, None)
    if args.accelerator == "cpu":
        env["OMP_NUM_THREADS"] = str(args.threads)
        env["MKL_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--result", str(result),
                   "--accelerator", args.accelerator, "--devices", str(devices), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
                   "--precision", args.precision, "--rollouts", str(args.rollouts), "--checkpoint", args.checkpoint,
                   "--threads", str(args.threads)]
        start = time.time()
        proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not result.is_file():
            tail = (proc.stderr or proc.stdout)[-2000:]
            print(f"  failed (exit {proc.returncode}):\n{tail}", file=sys.stderr)
            return {"error": tail.strip().splitlines()[-1] if tail.strip() else f"exit {proc.returncode}"}
        out = json.loads(result.read_text())
        out["process_seconds"] = round(time.time() - start, 1)
        return out


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _print_table(result: dict) -> None:
    reg = result["regression"]
    print(f"\nvalue regression ({reg['network']}, batch {reg['batch_size_per_process']}/process, "
          f"{reg['timed_steps']} timed steps, {result['machine']['accelerator']})")
    print(f"{'processes':>10}{'steps/s':>10}{'samples/s':>12}{'s/step':>9}{'wall s':>9}")
    for n, e in reg["by_devices"].items():
        if "error" in e:
            print(f"{n:>10}  failed: {e['error']}")
            continue
        print(f"{n:>10}{e['steps_per_second']:>10.2f}{e['samples_per_second']:>12.1f}"
              f"{1 / e['steps_per_second']:>9.3f}{e['process_seconds']:>9.1f}")
    if "speedup_2_over_1_samples_per_second" in reg:
        print(f"2-process / 1-process samples/s: {reg['speedup_2_over_1_samples_per_second']:.2f}x")
    roll = result["rollouts"]
    if roll is not None:
        if "error" in roll:
            print(f"rollouts failed: {roll['error']}")
        else:
            print(f"\nrollouts of {roll['model']}: {roll['rollouts']} in {roll['seconds']:.2f} s = "
                  f"{roll['rollouts_per_second']:.2f} rollouts/s ({roll['denoiser_calls_per_rollout']:.1f} denoiser "
                  f"calls each, {roll['num_steps']} steps, length {roll['seq_len']})")
            if roll.get("note"):
                print(f"NOTE: {roll['note']}")
    load = result["machine"]["load_average_at_start"]
    if load and result["machine"]["accelerator"] == "cpu" and load[0] > 0.5:
        print(f"load average at start {load} on {result['machine']['cpus']} CPUs: other work shares the cores, "
              "so the figures (above all 2-process ones) are lower bounds")


# --- workers (run in subprocesses) ------------------------------------------------------------------
def _fit_worker(args: argparse.Namespace) -> None:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from svdd_lightning.domains.dna.oracles import EnformerStyleClassifier
    from svdd_lightning.lightning.training import ValueRegression

    if args.accelerator == "cpu":
        torch.set_num_threads(args.threads)
    devices = int(args.devices)

    class SyntheticRollouts(L.LightningDataModule):
        """(x_t, t, reward) for this rank: random tokens masked with probability t, random rewards."""

        def train_dataloader(self) -> DataLoader:
            g = torch.Generator().manual_seed(1000 + self.trainer.global_rank)
            n = args.steps * args.batch_size
            x0 = torch.randint(0, 4, (n, args.seq_len), generator=g)
            t = torch.rand(n, generator=g)
            xt = x0.masked_fill(torch.rand(n, args.seq_len, generator=g) < t[:, None], MASK)
            reward = (x0 == 2).float().mean(1) + 0.1 * torch.randn(n, generator=g)
            return DataLoader(TensorDataset(xt, t, reward), batch_size=args.batch_size, shuffle=False, drop_last=True,
                              pin_memory=args.accelerator == "gpu")

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.start = self.end = None
            self.timed = 0

        def _sync(self, pl_module: L.LightningModule) -> None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == args.warmup and self.start is None:
                self._sync(pl_module)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.start is not None:
                self._sync(pl_module)
                self.end = time.perf_counter()
                self.timed = trainer.global_step - args.warmup

    torch.manual_seed(0)
    network = EnformerStyleClassifier(seq_len=args.seq_len, input_symbols=5, time_conditioning=True)
    module = ValueRegression(network=network)
    timer = StepTimer()
    trainer = L.Trainer(accelerator=args.accelerator, devices=devices, strategy="ddp" if devices > 1 else "auto",
                        max_steps=args.steps, logger=False, enable_checkpointing=False, use_distributed_sampler=False,
                        enable_progress_bar=False, enable_model_summary=False, precision=args.precision,
                        num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(module, datamodule=SyntheticRollouts())
    if trainer.is_global_zero:
        seconds = timer.end - timer.start
        steps_per_second = timer.timed / seconds
        Path(args.result).write_text(json.dumps({
            "devices": devices, "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__,
            "timed_steps": timer.timed, "seconds": seconds, "steps_per_second": steps_per_second,
            "samples_per_second": steps_per_second * args.batch_size * trainer.world_size,
            "samples_per_second_per_process": steps_per_second * args.batch_size,
            "parameters": sum(p.numel() for p in network.parameters()),
            "final_train_mse": float(trainer.callback_metrics.get("train/loss_reward", float("nan"))),
        }))


def _rollout_worker(args: argparse.Namespace) -> None:
    import torch

    from svdd_lightning import PretrainedSampling, checkpoints
    from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion

    if args.accelerator == "cpu":
        torch.set_num_threads(args.threads)
    note = None
    if (Path(args.checkpoint) / "config.json").is_file():
        model = checkpoints.load(args.checkpoint)
        name = str(Path(args.checkpoint).relative_to(ROOT) if Path(args.checkpoint).is_relative_to(ROOT) else args.checkpoint)
    else:
        torch.manual_seed(0)
        model = MaskedDiffusion(DilatedConvDenoiser(4), "ACGT", 200, 128)
        name = "random MaskedDiffusion(DilatedConvDenoiser(4), 'ACGT', 200, 128)"
        note = f"{args.checkpoint} does not exist: rollouts timed on a random model of the default shape"
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    model = model.to(device).eval().requires_grad_(False)
    decoder = PretrainedSampling()
    zero = lambda samples: [0.0] * len(samples)  # noqa: E731
    with torch.inference_mode():  # warm-up on a few rollouts
        decoder.sample(model, zero, [torch.Generator().manual_seed(10**6 + i) for i in range(min(4, args.rollouts))])
    generators = [torch.Generator().manual_seed(i) for i in range(args.rollouts)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        result = decoder.sample(model, zero, generators)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    Path(args.result).write_text(json.dumps({
        "model": name, "note": note, "rollouts": args.rollouts, "seconds": seconds,
        "rollouts_per_second": args.rollouts / seconds, "num_steps": model.num_steps, "seq_len": model.seq_len,
        "denoiser_calls_per_rollout": result.stats.denoiser_calls / args.rollouts,
        "parameters": sum(p.numel() for p in model.parameters()),
    }))


if __name__ == "__main__":
    main()
