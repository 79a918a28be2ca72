"""Vina docking reward: real docking against PARP1, failures as None, the cache, the worker timeout."""
import math
import pickle

import pytest

pytest.importorskip("vina", reason="VinaDocking needs AutoDock Vina: pip install vina")
pytest.importorskip("meeko", reason="VinaDocking needs meeko: pip install meeko")

from svdd_lightning.core.reward import GuardedReward, Reward  # noqa: E402
from svdd_lightning.domains.molecules.docking import ASSET_RECEPTORS, TARGET_BOXES, DockingQEDSA, VinaDocking  # noqa: E402
from svdd_lightning.domains.molecules.rewards import qed_score, sa_score  # noqa: E402
from svdd_lightning.yaml_keys import read_config

BENZAMIDE = "NC(=O)c1ccccc1"  # a PARP1 fragment: the nicotinamide pocket binds it
DRUG_LIKE = "CC(C)(C)c1ccc(cc1)S(=O)(=O)Nc1ccc(cc1)C(=O)O"  # several seconds to dock


@pytest.fixture(scope="module")
def parp1():
    reward = VinaDocking(target="parp1")
    yield reward
    reward.close()


def test_docks_a_fragment_and_scores_failures_none(parp1):
    values = parp1([BENZAMIDE, "", "not a smiles", "CCO.C", "OB(O)c1ccccc1", "CCO"])
    assert 3.0 < values[0] < 10.0 and math.isfinite(values[0])
    assert values[1:5] == [None] * 4  # empty, unparsable, two fragments, boron (no AutoDock type)
    assert 0.0 < values[5] < values[0]  # ethanol binds weaker than benzamide
    assert parp1.scores[BENZAMIDE] == pytest.approx(-values[0])
    assert (parp1.docked, parp1.cached, parp1.failed, parp1.timeouts) == (2, 0, 4, 0)


def test_cache_serves_repeated_molecules(parp1):
    first = parp1([BENZAMIDE])[0]
    docked, cached = parp1.docked, parp1.cached
    assert parp1(["c1ccccc1C(N)=O", BENZAMIDE]) == [first, first]  # canonical SMILES is the key
    assert parp1.docked == docked and parp1.cached == cached + 2
    floored = GuardedReward(pickle.loads(pickle.dumps(parp1)))([BENZAMIDE, ""])  # a pickled copy keeps the scores
    assert floored.tolist() == pytest.approx([first, 0.0]) and parp1._workers


def test_timeout_stops_a_molecule_and_rebuilds_the_worker(parp1):
    parp1.timeout = 0.05
    try:
        assert parp1([DRUG_LIKE]) == [None] and parp1.timeouts == 1
    finally:
        parp1.timeout = 60.0
    assert parp1(["CCN"])[0] > 0.0


def test_two_processes_give_the_scores_of_one(parp1):
    reward = VinaDocking(target="parp1", processes=2)
    try:
        molecules = [BENZAMIDE, "CCO", "CCN"]
        values = reward(molecules + [""])
        assert len(reward._workers) == 2 and values[3] is None
        assert values[:3] == pytest.approx(parp1(molecules))  # seeded: the same in any worker
    finally:
        reward.close()
    assert reward._workers == []


def test_a_receptor_the_workers_cannot_read_fails_clearly(tmp_path):
    receptor = tmp_path / "parp1.pdbqt"
    receptor.write_text((ASSET_RECEPTORS / "parp1.pdbqt").read_text())
    reward = VinaDocking(str(receptor), target="parp1")
    receptor.unlink()
    with pytest.raises(RuntimeError, match="cannot prepare receptor"):
        reward(["CCO"])
    assert reward._workers == []


def test_configuration_errors_are_one_line(tmp_path):
    receptor = str(ASSET_RECEPTORS / "parp1.pdbqt")
    bad = tmp_path / "bad.pdbqt"
    bad.write_text("not a receptor\n")
    cases = [
        (dict(target="parp2"), "VinaDocking.target"),
        (dict(), "VinaDocking.receptor"),
        (dict(receptor=str(tmp_path / "missing.pdbqt"), target="parp1"), "VinaDocking.receptor"),
        (dict(receptor=str(bad), target="parp1"), "VinaDocking.receptor: Vina cannot read"),
        (dict(receptor=receptor), "VinaDocking.center"),
        (dict(receptor=receptor, center=(0.0, 0.0)), "VinaDocking.center"),
        (dict(receptor=receptor, center=(0.0, 0.0, 0.0), box_size=(1.0, 0.0, 1.0)), "VinaDocking.box_size"),
        (dict(target="parp1", processes=0), "VinaDocking.processes"),
        (dict(target="parp1", timeout=0), "VinaDocking.timeout"),
        (dict(target="parp1", seed=-1), "VinaDocking.seed"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ValueError, match=field) as err:
            VinaDocking(**kwargs)
        assert "\n" not in str(err.value)


def test_shipped_receptors_and_config_construction():
    assert all((ASSET_RECEPTORS / f"{target}.pdbqt").is_file() for target in TARGET_BOXES)
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--reward", type=Reward)
    config = parser.parse_args(["--reward", '{"class_path": "svdd_lightning.domains.molecules.docking.VinaDocking", '
                                            '"init_args": {"target": "jak2", "box_size": [20, 20, 20]}}'])
    reward = parser.instantiate_classes(config).reward
    assert reward.center == TARGET_BOXES["jak2"][0] and reward.box_size == (20.0, 20.0, 20.0)
    assert reward.receptor.endswith("jak2.pdbqt") and reward.name == "docking"


def test_compare_docking_config_runs_on_a_short_grid(tmp_path):
    """configs/molecules/compare_docking_parp1.yaml end to end: 2 molecules per method on a 4-step grid."""
    import json

    import yaml
    from tiny_dna import run_main

    config = read_config("configs/molecules/compare_docking_parp1.yaml")
    config["model"]["model_args"] = {"num_steps": 4}
    config["model"]["reward"]["init_args"]["processes"] = 1
    config["model"]["max_failure_fraction"] = None  # a 4-step grid may give only invalid molecules in a batch
    methods = config["model"]["methods"]
    methods["best_of_n"]["init_args"]["n"] = 2
    del methods["svdd_mc"]  # its value network is trained on docked rollouts (configs/molecules/value_mc_docking_parp1.yaml)
    methods["svdd_pm"]["init_args"].update(num_candidates=2, select_every=2)
    methods["svdd_pm"]["init_args"]["value"]["init_args"]["x0_steps"] = 2
    config["data"] = {"num_samples": 2, "batch_size": 2}
    path = tmp_path / "docking.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    run_main("decode.py", "predict", "--config", str(path), "--output_dir", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pretrained", "best_of_n", "svdd_pm"}
    for entry in summary.values():
        assert entry["n"] == 2 and entry["reward"]["mean"] >= 0.0  # max(0, -Vina score); failures floor at 0
    assert summary["svdd_pm"]["per_sample"]["reward_calls"] <= 2 * 2 + 1  # 2 selections of 2 candidates, + final


def test_drug_design_objective_multiplies_normalised_docking_qed_and_sa(parp1):
    objective = DockingQEDSA(parp1)
    values = objective([BENZAMIDE, "", "CCO.C"])
    expected = min(parp1([BENZAMIDE])[0], 20.0) / 20.0 * qed_score(BENZAMIDE) * sa_score(BENZAMIDE)
    assert values[0] == pytest.approx(expected) and 0.0 < values[0] < 1.0
    assert values[1:] == [None, None]  # invalid; cannot be docked
    with pytest.raises(ValueError, match="DockingQEDSA.docking must be a VinaDocking"):
        DockingQEDSA(lambda s: [1.0] * len(s))
