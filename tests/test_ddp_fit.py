"""DDP needs every trainable parameter to get a gradient at every step: a parameter without one fails
the second step ("Expected to have finished reduction in the prior iteration"). The checks: one
training step of every shipped architecture in this process (cheap), and a 2-process DDP fit of each
plus every decoder under 2 processes (one launch of ``tests/ddp_jobs.py``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import default_collate

from ddp_jobs import DDP_FIT_CASES, ROOT, Items, decoding_modules, training_cases


@pytest.mark.parametrize("name", sorted(training_cases()))
def test_every_trainable_parameter_gets_a_gradient_in_one_training_step(name):
    build, make = training_cases()[name]
    torch.manual_seed(0)
    module = build()
    batch = default_collate(list(Items(make, n=4)))
    loss = module.training_step(batch, 0)
    loss.backward()
    missing = [key for key, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: trainable parameters without a gradient (DDP fails on them): {missing}"


def test_shipped_gdss_networks_keep_their_outputs_with_the_unused_modules_skipped():
    """The shipped QM9 model loads (strict) and its adjacency network gives the same output whether its last
    layer computes the discarded node features or not; the unused modules are frozen, none else."""
    from svdd_lightning import checkpoints

    model = checkpoints.load(ROOT / "checkpoints/molecules/gdss_qm9")
    generator = torch.Generator().manual_seed(0)
    flags = torch.ones(3, 9)
    x, adj = torch.randn(3, 9, 4, generator=generator), torch.randn(3, 9, 9, generator=generator).triu(1)
    adj = adj + adj.transpose(1, 2)
    last = model.adj_network.layers[-1]
    frozen = {id(p) for m in last.unused_modules() for p in m.parameters()}
    assert len(frozen) == 20  # GDSS's QM9 adjacency network: gnn_v of its 8 channels and multi_channel
    assert all(p.requires_grad == (id(p) not in frozen) for p in model.adj_network.parameters())
    with torch.no_grad():
        skipped = model.adj_network(x, adj, flags)
        last.outputs = ("x", "adj")  # compute everything, as GDSS does, and discard the node features
        full = model.adj_network(x, adj, flags)
    assert torch.equal(skipped, full)


def test_ddp_fit_of_every_architecture_and_decoding_under_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK"):
        env.pop(key, None)
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_jobs.py"), str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert set(ranks[0]["fit"]) == set(DDP_FIT_CASES)
    for name, fit in ranks[0]["fit"].items():
        assert fit["steps"] == 3, name
        # the gradients were all-reduced: both ranks hold the same weights
        assert fit["checksum"] == pytest.approx(ranks[1]["fit"][name]["checksum"], rel=1e-6), name
    for name in decoding_modules():
        rows = ranks[0]["predict"][name] + ranks[1]["predict"][name]
        methods = {row["method"] for row in rows}
        assert methods == {"pretrained", "best_of_n", "svdd_pm", "svdd_mc", "smc", "dps"}, name
        for method in methods:
            assert sorted(row["index"] for row in rows if row["method"] == method) == [0, 1, 2, 3], (name, method)
