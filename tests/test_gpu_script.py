"""benchmarks/gpu.sh in its tiny mode: every section runs (on the CPU here) and writes its figures.

The script's Python part runs in this process (its imports are the suite's already); the shell wrapper is
checked for syntax and for the wheel-install step it takes when .whl/ holds wheels."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from tiny_dna import ROOT


def test_gpu_benchmark_runs_every_section_in_tiny_mode(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_bench

    monkeypatch.setattr(sys, "argv", ["gpu_bench.py", "--out", str(tmp_path), "--tiny"])
    threads = torch.get_num_threads()
    try:
        gpu_bench.main()
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    sections = report["sections"]
    assert set(sections) == {"dna_job", "head_to_head", "stable_diffusion", "sd3"}  # ddp_fit needs 2 GPUs
    assert not [name for name, value in sections.items() if "error" in value], sections
    for precision in ("32-true", "bf16-mixed"):
        job = sections["dna_job"][precision]
        assert set(job["samples_per_second"]) == {"pretrained", "best_of_n", "svdd_pm", "svdd_mc"}
        assert job["svdd_pm_over_m_pretrained_wall"] > 0
    assert sections["head_to_head"]["ratio"] > 0 and len(sections["head_to_head"]["samples_per_second"]) == 2
    assert sections["stable_diffusion"]["seconds_per_image"] > 0
    assert sections["sd3"]["seconds_per_image"] > 0 and sections["sd3"]["denoiser_calls_per_image"] == 2 * 2 + 1
    assert report["machine"]["torch_threads"] >= 1


def test_gpu_script_is_valid_bash_that_installs_carried_wheels():
    script = (ROOT / "benchmarks" / "gpu.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")]).returncode == 0
    assert "pip install -q --no-index --no-deps" in script and ".whl/*.whl" in script
    assert "timeout 470 python3 benchmarks/gpu_bench.py" in script  # under 8 minutes with the start
