"""A YAML config that gives a key twice is refused in one line naming the key, the file and both lines:
in every config the commands read (decode.py's is tested in test_bad_inputs.py), and no shipped config does it."""
from __future__ import annotations

from pathlib import Path

import pytest

from svdd_lightning.lightning.expert_iteration import main as finetune_main
from svdd_lightning.lightning.cli import main_train
from svdd_lightning.yaml_keys import DuplicateKeyError, check_unique_keys, safe_load

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
