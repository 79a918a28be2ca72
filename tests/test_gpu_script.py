"""benchmarks/gpu.sh in its tiny mode: every section runs (on the CPU here) and writes its figures."""
from __future__ import annotations

import json
import os
import subprocess

from tiny_dna import ROOT


def test_gpu_benchmark_script_runs_every_section_in_tiny_mode(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    sections = report["sections"]
    assert set(sections) == {"dna_job", "head_to_head", "stable_diffusion"}  # ddp_fit needs 2 GPUs
    assert not [name for name, value in sections.items() if "error" in value]
    for precision in ("32-true", "bf16-mixed"):
        job = sections["dna_job"][precision]
        assert set(job["samples_per_second"]) == {"pretrained", "best_of_n", "svdd_pm", "svdd_mc"}
        assert job["svdd_pm_over_m_pretrained_wall"] > 0
    assert sections["head_to_head"]["ratio"] > 0 and len(sections["head_to_head"]["samples_per_second"]) == 2
    assert sections["stable_diffusion"]["seconds_per_image"] > 0
    assert report["machine"]["torch_threads"] == 1 and report["machine"]["threads_source"] == "OMP_NUM_THREADS"
