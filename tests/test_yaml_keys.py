"""A YAML config that gives a key twice is refused in one line naming the key, the file and both lines:
in every config the commands read (decode.py's is tested in test_bad_inputs.py), and no shipped config does it."""
from __future__ import annotations

from pathlib import Path

import pytest

from svdd_lightning.lightning.expert_iteration import main as finetune_main
from svdd_lightning.lightning.cli import main_train
from svdd_lightning.yaml_keys import DuplicateKeyError, check_unique_keys, compose, read_config, safe_load

ROOT = Path(__file__).resolve().parent.parent


def test_a_repeated_key_is_refused_at_any_depth_and_an_alias_or_merge_is_not():
    with pytest.raises(DuplicateKeyError, match=r"^c.yaml: key 'n' appears twice \(lines 3 and 5\); keep one$"):
        check_unique_keys("a:\n  - b:\n      n: 1\n      m: 2\n      'n': 3\n", "c.yaml")
    assert safe_load("base: &b {x: 1}\nother:\n  <<: *b\n  x: 2\nagain: *b\n", "c.yaml") == {
        "base": {"x": 1}, "other": {"x": 2}, "again": {"x": 1}}


def test_no_shipped_config_repeats_a_key():
    files = [*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("examples/**/*.yaml")]
    assert len(files) >= 40
    for path in files:
        check_unique_keys(path.read_text(), str(path))


def test_train_refuses_a_repeated_key_in_a_composed_config(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("trainer:\n  max_steps: 1\n  max_steps: 2\n")
    with pytest.raises(SystemExit) as exit_:
        main_train(["fit", "--config", "configs/dna/pretrain.yaml", "--config", str(overlay),  # no data: never trains
                    "--data.init_args.path", str(tmp_path / "none.tsv"), "--trainer.default_root_dir", str(tmp_path)])
    assert exit_.value.code == (f"error: {overlay}: key 'max_steps' appears twice (lines 2 and 3); keep one "
                                f"(SVDD_DEBUG=1 shows the traceback)")


def test_finetune_refuses_a_repeated_key_in_its_own_reading_of_the_configs(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("seed_everything: 0\nmodel:\n  init_args: {}\nseed_everything: 1\n")
    with pytest.raises(SystemExit) as exit_:
        finetune_main(["--config", "configs/dna/finetune.yaml", "--config", str(overlay), "--rounds", "1",
                       "--output_dir", str(tmp_path / "out")])
    assert exit_.value.code == (f"error: {overlay}: key 'seed_everything' appears twice (lines 1 and 4); keep one "
                                f"(SVDD_DEBUG=1 shows the traceback)")
    assert not (tmp_path / "out").exists()


def test_a_config_is_composed_over_its_defaults_in_order(tmp_path):
    (tmp_path / "pieces").mkdir()
    (tmp_path / "pieces" / "trainer.yaml").write_text("trainer:\n  max_steps: 10\n  devices: 1\n")
    (tmp_path / "pieces" / "longer.yaml").write_text("defaults: [trainer.yaml]\ntrainer:\n  max_steps: 20\n")
    (tmp_path / "job.yaml").write_text("defaults:\n  - pieces/longer.yaml\nseed_everything: 3\n"
                                       "trainer:\n  devices: 2\n")
    assert read_config(tmp_path / "job.yaml") == {"trainer": {"max_steps": 20, "devices": 2}, "seed_everything": 3}
    # _self_ places the config's own settings: a later piece goes over them, and its new keys come after
    (tmp_path / "metrics.yaml").write_text("metrics: {b: 2, a: 1}\n")
    (tmp_path / "own_first.yaml").write_text("defaults: [_self_, metrics.yaml]\nmetrics: {c: 3, a: 0}\n")
    metrics = read_config(tmp_path / "own_first.yaml")["metrics"]
    assert metrics == {"c": 3, "a": 1, "b": 2} and list(metrics) == ["c", "a", "b"]


def test_defaults_that_are_missing_malformed_or_circular_are_refused_in_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: [missing.yaml]\n")
    with pytest.raises(FileNotFoundError, match=r"^a -> missing.yaml: no config file .*missing.yaml$"):
        read_config(tmp_path / "a.yaml", "a")
    (tmp_path / "b.yaml").write_text("defaults: c.yaml\n")
    with pytest.raises(ValueError, match=r"^b: defaults must be a list of config files"):
        read_config(tmp_path / "b.yaml", "b")
    (tmp_path / "c.yaml").write_text("defaults: [d.yaml]\n")
    (tmp_path / "d.yaml").write_text("defaults: [c.yaml]\n")
    with pytest.raises(ValueError, match=r"^c -> d.yaml -> c.yaml: defaults includes itself$"):
        read_config(tmp_path / "c.yaml", "c")


def test_train_and_finetune_read_defaults(tmp_path, capsys):
    (tmp_path / "steps.yaml").write_text("trainer:\n  max_steps: 7\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"defaults: [{ROOT / 'configs/dna/pretrain.yaml'}, steps.yaml]\n")
    with pytest.raises(SystemExit):
        main_train(["fit", "--config", str(job), "--print_config"])
    printed = capsys.readouterr().out
    assert "max_steps: 7" in printed and "MaskedDiffusionPretraining" in printed
    finetune = tmp_path / "finetune.yaml"
    finetune.write_text(f"defaults: [{ROOT / 'configs/dna/finetune.yaml'}, steps.yaml]\n")
    from svdd_lightning.lightning.expert_iteration import read_configs
    assert read_configs(str(finetune)) == compose(read_configs("configs/dna/finetune.yaml"), {"trainer": {"max_steps": 7}})


def test_a_piece_not_beside_the_config_is_found_among_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.yaml").write_text("defaults: [configs/methods/svdd_pm.yaml]\n")
    assert read_config(tmp_path / "job.yaml") == read_config(ROOT / "configs" / "methods" / "svdd_pm.yaml")
