"""Fine-tuning on guided samples and expert iteration, on tiny models (svdd_lightning.lightning.finetuning)."""
from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from svdd_lightning import SVDD, PosteriorMeanValue, PretrainedSampling, checkpoints
from svdd_lightning.core.reward import Reward
from svdd_lightning.evaluation import ELBOMetric
from svdd_lightning.lightning.decoding import DecodingModule
from svdd_lightning.lightning.expert_iteration import (expert_iteration, parse_schedule, read_configs,
                                                     scheduled_args)
from svdd_lightning.diffusion.masked import MaskedDiffusionObjective
from svdd_lightning.lightning.finetuning import (GuidedFineTuning, GuidedSamplesDataModule,
                                                 generate_guided_samples, read_decode_run, reward_weights)
from svdd_lightning.lightning.training import ExportBest
from svdd_lightning.yaml_keys import read_config, compose

from tiny_dna import LENGTH, build_tiny_checkpoints


class GCReward(Reward):
    """Fraction of G and C: cheap, and a clear direction for fine-tuning to move in."""

    name = "gc"

    def __call__(self, samples):
        return [sum(c in "GC" for c in s) / len(s) for s in samples]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def regions(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "regions.tsv"
    rows = ["dhs_id\tchr\tstart\tend\tsequence\tsplit\tcell_type"]
    for i in range(60):
        split = ["train", "train", "validation", "test"][i % 4]
        rows.append(f"r{i}\tchr1\t0\t{LENGTH}\t{''.join(rng.choices('ACGT', k=LENGTH))}\t{split}\tHepG2")
    path.write_text("\n".join(rows) + "\n")
    return path


def write_run(directory: Path, rows: list[tuple[str, int, str, float]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "samples.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "index", "sequence", "reward", "elbo"])
        writer.writerows([(m, i, s, r, -1.0) for m, i, s, r in rows])
    return directory


def svdd() -> SVDD:
    return SVDD(PosteriorMeanValue(), num_candidates=3)


# --- the fine-tuning set --------------------------------------------------------------------------
def test_generation_is_decode_py_per_index_and_resumes(tiny, tmp_path):
    model = checkpoints.load(tiny["mdlm"])
    first = generate_guided_samples(model, GCReward(), svdd(), tmp_path / "a", list(range(6)), seed=3, method="svdd_pm",
                                    batch_size=4)
    more = generate_guided_samples(model, GCReward(), svdd(), tmp_path / "a", list(range(10)), seed=3, method="svdd_pm",
                                   batch_size=4)
    assert (first, more) == (6, 4)  # the second call decodes only the missing samples
    once = generate_guided_samples(model, GCReward(), svdd(), tmp_path / "b", list(range(10)), seed=3, method="svdd_pm",
                                   batch_size=7)
    assert once == 10
    from svdd_lightning.lightning.writer import write_outputs
    for name in ("a", "b"):
        write_outputs(tmp_path / name, [], {}, {})
    method, indices, samples, rewards = read_decode_run(tmp_path / "a")
    assert method == "svdd_pm" and indices == list(range(10))
    assert read_decode_run(tmp_path / "b")[2] == samples  # batching and resuming change nothing
    decoder = DecodingModule(model, GCReward(), {"svdd_pm": svdd()}, seed=3)
    with torch.inference_mode():
        rows = decoder.predict_step({"index": torch.arange(10), "spare": torch.zeros(10, dtype=torch.bool)}, 0)["rows"]
    assert [r["sample"] for r in rows] == samples  # what decode.py predict gives for the same settings
    torch.testing.assert_close(rewards.float(), torch.tensor([r["reward"] for r in rows]))


def test_reading_a_decode_run_weights_and_splits(tiny, tmp_path):
    seqs = ["A" * LENGTH, "C" * LENGTH, "G" * LENGTH, "T" * LENGTH, "ACGT" * (LENGTH // 4)]
    run = write_run(tmp_path / "run", [("svdd_pm", i, seqs[i], float(i)) for i in (4, 0, 3, 1, 2)]
                    + [("pretrained", 0, seqs[0], 0.0)])
    with pytest.raises(ValueError, match=r"data.method: .* holds the methods \['pretrained', 'svdd_pm'\]"):
        GuidedSamplesDataModule(str(tiny["mdlm"]), samples=str(run), val_samples=1).setup("fit")
    with pytest.raises(ValueError, match="'best' is not a method"):
        GuidedSamplesDataModule(str(tiny["mdlm"]), samples=str(run), method="best", val_samples=1).setup("fit")
    dm = GuidedSamplesDataModule(str(tiny["mdlm"]), samples=str(run), method="svdd_pm", val_samples=2, alpha=0.5,
                                 batch_size=2)
    dm.setup("fit")
    val_x, _ = dm.splits["val"].tensors
    train_x, train_w = dm.splits["train"].tensors
    assert torch.equal(val_x, checkpoints.load(tiny["mdlm"]).encode(seqs[:2]))  # lowest indices held out
    assert torch.equal(train_x, checkpoints.load(tiny["mdlm"]).encode(seqs[2:]))
    expected = torch.exp(torch.tensor([2.0, 3.0, 4.0]) / 0.5)
    torch.testing.assert_close(train_w, expected / expected.mean())  # exp(r / alpha), mean 1
    assert dm.provenance()["num_train"] == 3 and 1 < dm.provenance()["effective_train_samples"] < 3
    torch.testing.assert_close(reward_weights(torch.tensor([1.0, 5.0]), None), torch.ones(2))
    with pytest.raises(FileNotFoundError, match="no samples.csv in"):
        GuidedSamplesDataModule(str(tiny["mdlm"]), samples=str(tmp_path), val_samples=1).setup("fit")
    with pytest.raises(ValueError, match="either data.samples"):
        GuidedSamplesDataModule(str(tiny["mdlm"]), samples=str(run), decoder=svdd())


def _part_rows(folder: Path) -> list[int]:
    """The indices of the parts' complete lines (a line cut short by a kill stays, unreadable)."""
    lines = [line for part in sorted((folder / "parts").glob("*.jsonl")) for line in part.read_text().splitlines()]
    return [r["index"] for line in lines if line.endswith("}") for r in json.loads(line)["rows"]]


def test_generated_cache_resumes_grows_and_refuses_other_settings(tiny, tmp_path):
    cache = tmp_path / "c"
    args = dict(decoder=svdd(), reward=GCReward(), val_samples=1, cache_dir=str(cache), generate_batch_size=2,
                batch_size=2)
    dm = GuidedSamplesDataModule(str(tiny["mdlm"]), seed=0, num_samples=4, **args)
    dm.setup("fit")
    summary = json.loads((cache / "summary.json").read_text())
    assert summary["guided"]["n"] == 4 and summary["guided"]["per_sample"]["denoiser_calls"] > 0
    assert len(dm.splits["train"]) == 3 and len(dm.splits["val"]) == 1
    # a kill in the middle of a batch's line: that batch is decoded again, the rest is kept
    part = cache / "parts" / "rank0.jsonl"
    lines = part.read_text().splitlines()
    part.write_text(lines[0] + "\n" + lines[1][:20])
    GuidedSamplesDataModule(str(tiny["mdlm"]), seed=0, num_samples=6, **args).setup("fit")
    assert sorted(_part_rows(cache)) == list(range(6))  # indices 2, 3 again, 4, 5 new; 0, 1 kept
    grown = GuidedSamplesDataModule(str(tiny["mdlm"]), seed=0, num_samples=6, **args)
    grown.setup("fit")  # nothing left to decode: the merged set is read
    assert len(_part_rows(cache)) == 6 and len(grown.splits["train"]) == 5
    fresh = GuidedSamplesDataModule(str(tiny["mdlm"]), seed=0, num_samples=6, **{**args, "cache_dir": str(tmp_path / "d")})
    fresh.setup("fit")
    assert torch.equal(fresh.splits["train"].tensors[0], grown.splits["train"].tensors[0])  # resuming changed nothing
    with pytest.raises(ValueError, match=r"holds samples of guided made with other settings \(seed: 0 -> 1\)"):
        GuidedSamplesDataModule(str(tiny["mdlm"]), seed=1, num_samples=4, **args).setup("fit")


# --- the objective ------------------------------------------------------------------------------------
def test_masked_objective_is_the_nelbo_and_a_kl_that_vanishes_at_the_reference(tiny):
    model, reference = checkpoints.load(tiny["mdlm"]), checkpoints.load(tiny["mdlm"])
    x0 = model.encode(["ACGT" * (LENGTH // 4), "GGCC" * (LENGTH // 4)])
    t = torch.tensor([0.3, 0.8])
    objective = MaskedDiffusionObjective()
    nelbo, kl = objective._losses(model, x0, t, reference, torch.Generator().manual_seed(1))
    expected = model.nelbo(x0, t, torch.Generator().manual_seed(1)) / (LENGTH * math.log(2))
    torch.testing.assert_close(nelbo, expected)
    torch.testing.assert_close(kl, torch.zeros(2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.requires_grad_(True)
    nelbo, kl = objective._losses(model, x0, t, reference, torch.Generator().manual_seed(1))
    assert bool((kl > 0).all())  # both rows have masked positions at t = 0.3 and 0.8 with this noise
    (nelbo.mean() + kl.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_elbo_metric_under_a_reference_model(tiny):
    model, other = checkpoints.load(tiny["mdlm"]), checkpoints.load(tiny["mdlm"])
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    x0 = model.encode(["ACGT" * (LENGTH // 4)] * 2)
    torch.testing.assert_close(ELBOMetric(2, model=str(tiny["mdlm"]))(other, x0, []), model.elbo(x0, num_times=2))
    assert not torch.allclose(ELBOMetric(2)(other, x0, []), model.elbo(x0, num_times=2))


# --- fine-tuning --------------------------------------------------------------------------------------
def _fit(tiny, run: Path, export: Path, steps: int = 30, **module_args) -> GuidedFineTuning:
    dm = GuidedSamplesDataModule(str(tiny["mdlm"]), samples=str(run), val_samples=4, batch_size=8)
    module = GuidedFineTuning(str(tiny["mdlm"]), lr=1e-2, warmup_steps=1, **module_args)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, val_check_interval=steps, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, callbacks=[ExportBest(str(export), "val/loss")])
    trainer.fit(module, dm)
    return module


def test_fine_tuning_learns_the_guided_samples_and_the_kl_anchor_holds_it_back(tiny, tmp_path):
    rng = random.Random(0)
    rows = [("svdd_pm", i, "".join(rng.choices("GC", k=LENGTH)), 1.0) for i in range(36)]
    run = write_run(tmp_path / "run", rows)
    free = _fit(tiny, run, tmp_path / "free")
    anchored = _fit(tiny, run, tmp_path / "anchored", kl_weight=20.0)
    fine_tuned = checkpoints.load(tmp_path / "free")  # what decode.py loads
    assert isinstance(fine_tuned, type(checkpoints.load(tiny["mdlm"])))
    meta = checkpoints.metadata(tmp_path / "free")
    assert meta["finetuning"]["samples"]["num_train"] == 32 and meta["finetuning"]["from"] == str(tiny["mdlm"])
    gens = [torch.Generator().manual_seed(i) for i in range(32)]
    with torch.inference_mode():
        before = PretrainedSampling().sample(checkpoints.load(tiny["mdlm"]), GCReward(), gens).rewards.mean()
        gens = [torch.Generator().manual_seed(i) for i in range(32)]
        after = PretrainedSampling().sample(fine_tuned, GCReward(), gens).rewards.mean()
    assert after > before + 0.2  # the designs were all G/C: so are the fine-tuned model's samples
    kl_free, kl_anchored = (float(m.trainer.callback_metrics["val/kl"]) for m in (free, anchored))
    assert kl_anchored < 0.5 * kl_free
    with pytest.raises(ValueError, match="ExportBest.directory .* is the model being fine-tuned"):
        _fit(tiny, run, tiny["mdlm"], steps=1)  # would overwrite the model it starts from


def test_mixing_in_original_data(tiny, regions, tmp_path):
    rows = [("svdd_pm", i, "G" * LENGTH, 1.0) for i in range(12)]
    run = write_run(tmp_path / "run", rows)
    from svdd_lightning.domains.dna.data import DNARegionsDataModule

    dm = GuidedSamplesDataModule(str(tiny["mdlm"]), samples=str(run), val_samples=4, batch_size=4,
                                 anchor_data=DNARegionsDataModule(str(regions), batch_size=4))
    module = GuidedFineTuning(str(tiny["mdlm"]), data_weight=1.0)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=2, num_sanity_val_steps=0)
    trainer.fit(module, dm)
    assert "train/data_loss" in trainer.callback_metrics
    trainer.validate(module, dm, verbose=False)
    metrics = trainer.callback_metrics
    assert {"val/data_loss", "val/guided_loss", "val/kl"} <= set(metrics)
    expected = metrics["val/guided_loss"] + metrics["val/data_loss"]  # kl_weight 0, data_weight 1
    torch.testing.assert_close(metrics["val/loss"], expected)


# --- expert iteration ---------------------------------------------------------------------------------
def test_expert_iteration_runs_rounds_and_resumes(tiny, tmp_path):
    config = read_config("configs/dna/finetune.yaml")
    config["trainer"].update(max_steps=2, val_check_interval=2, enable_progress_bar=False, enable_model_summary=False,
                             logger=False, accelerator="cpu")
    config["model"]["init_args"].update(model=str(tiny["mdlm"]), data_weight=0.0)
    data = config["data"]["init_args"]
    data.update(model=str(tiny["mdlm"]), num_samples=6, val_samples=2, batch_size=4, generate_batch_size=6,
                anchor_data=None)
    data["decoder"]["init_args"]["num_candidates"] = 2
    data["reward"]["init_args"]["checkpoint"] = str(tiny["reward"])
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "iter"
    first = expert_iteration(path, 1, out)
    model_1 = out / "round_1" / "model" / "model.safetensors"
    stamp = model_1.stat().st_mtime_ns
    # round 1 is finished: only round 2 runs, with round 2's value of the schedule
    records = expert_iteration(path, 2, out, schedule=["model.data_weight=0.0,0.25"])
    assert model_1.stat().st_mtime_ns == stamp and records[0] == first[0]
    assert [r["round"] for r in records] == [1, 2]
    assert records[1]["generated_from"] == str(out / "round_1" / "model")
    assert records[1]["reference"] == str(tiny["mdlm"])  # every round is anchored to the original model
    assert records[1]["generated"]["svdd_pm"]["n"] == 6
    round_2_text = (out / "round_2" / "fit_config.yaml").read_text()
    assert round_2_text.startswith("# applied on top by finetune.py for this round: --model.data_weight=0.25\n")
    round_2 = yaml.safe_load(round_2_text)
    assert round_2["data"]["init_args"]["seed"] == data["seed"] + 1
    assert checkpoints.metadata(out / "round_2" / "model")["finetuning"]["reference"] == str(tiny["mdlm"])
    assert checkpoints.metadata(out / "round_2" / "model")["finetuning"]["data_weight"] == 0.25
    assert records[1]["overrides"] == ["--model.data_weight=0.25"]
    assert json.loads((out / "rounds.json").read_text()) == records
    # a round killed after its export but before its record: it runs again and replaces the export
    (out / "round_2" / "round.json").unlink()
    parts = (out / "round_2" / "generated" / "parts" / "rank0.jsonl").read_text()
    again = expert_iteration(path, 2, out)
    assert again[0] == records[0] and (out / "round_2" / "round.json").is_file()
    assert (out / "round_2" / "generated" / "parts" / "rank0.jsonl").read_text() == parts  # its samples were reused
    with pytest.raises(ValueError, match="--data.init_args.seed is set by each round"):
        expert_iteration(path, 2, out, ["--data.init_args.seed=4"])


def test_configs_compose_in_order_and_a_new_class_path_replaces_the_component():
    base = {"model": {"class_path": "A", "init_args": {"x": 1, "y": 2}},
            "data": {"init_args": {"value": {"class_path": "P", "init_args": {"a": 1}}, "keep": [1]}}}
    overlay = {"model": {"init_args": {"y": 3}}, "data": {"init_args": {"value": {"class_path": "Q", "init_args": {"b": 2}}}}}
    assert compose(base, overlay) == {"model": {"class_path": "A", "init_args": {"x": 1, "y": 3}},
                                      "data": {"init_args": {"value": {"class_path": "Q", "init_args": {"b": 2}},
                                                             "keep": [1]}}}
    assert base["model"]["init_args"]["y"] == 2  # the inputs are not changed
    # the shipped overlay: the posterior-sampling value in the otherwise unchanged SVDD, its own folders
    composed = read_configs(["configs/dna/finetune.yaml", "configs/dna/finetune_ps.yaml"])
    shipped = read_configs("configs/dna/finetune.yaml")
    data, decoder = composed["data"]["init_args"], composed["data"]["init_args"]["decoder"]
    assert decoder["init_args"]["value"] == {"class_path": "svdd_lightning.PosteriorSamplingValue",
                                             "init_args": {"num_samples": 4}}
    assert {k: v for k, v in decoder["init_args"].items() if k != "value"} == {
        k: v for k, v in shipped["data"]["init_args"]["decoder"]["init_args"].items() if k != "value"}
    assert data["method"] == "svdd_ps" and data["cache_dir"] == "runs/dna_finetune_ps/generated"
    assert composed["model"] == shipped["model"]
    with pytest.raises(FileNotFoundError, match="--config: no file configs/dna/nothing.yaml"):
        read_configs(["configs/dna/finetune.yaml", "configs/dna/nothing.yaml"])


def test_schedule_gives_each_round_its_value_and_the_last_after():
    schedule = parse_schedule(["model.data_weight=0.1,1.0", "--model.kl_weight=0.5"])
    assert [scheduled_args(schedule, k) for k in (1, 2, 3)] == [
        ["--model.data_weight=0.1", "--model.kl_weight=0.5"], ["--model.data_weight=1.0", "--model.kl_weight=0.5"],
        ["--model.data_weight=1.0", "--model.kl_weight=0.5"]]
    assert parse_schedule({"data.alpha": [None, 2.0]}) == {"data.alpha": ["null", "2.0"]}
    for bad, message in (("model.data_weight", "expected KEY=V1,V2"), ("model.data_weight=0.1,", "one value per round"),
                         ("data.init_args.seed=1,2", "set by each round")):
        with pytest.raises(ValueError, match=message):
            parse_schedule([bad])


def test_finetune_command_bad_config_is_one_line_error(capsys):
    from svdd_lightning.lightning.expert_iteration import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "configs/dna/compare.yaml", "--rounds", "1"])
    assert str(exit_info.value).startswith("error: configs/dna/compare.yaml: model must be "
                                           "svdd_lightning.lightning.finetuning.GuidedFineTuning")


# --- the command line, end to end ---------------------------------------------------------------------
@pytest.fixture
def keep_matmul_precision():
    """The CLIs set torch's float32 matmul precision from their config: put it back for the other tests."""
    precision = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(precision)


def test_decode_run_to_fine_tuned_model_to_decode(tiny, regions, tmp_path, keep_matmul_precision):
    """decode.py predict -> train.py fit on its SVDD-PM designs (finetune_from_run.yaml) -> decode.py on the export."""
    from svdd_lightning.lightning.cli import main_decode, main_train
    from tiny_dna import decode_args

    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    # the compare job reduced to pretrained sampling and SVDD-PM (the method fine-tuned on)
    compare = read_config("configs/dna/compare.yaml")
    compare["model"]["methods"] = {m: compare["model"]["methods"][m] for m in ("pretrained", "svdd_pm")}
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(compare))

    def decode(out, *extra):
        args = decode_args(tiny, out, *extra)
        args[args.index("configs/dna/compare.yaml")] = str(tmp_path / "compare.yaml")
        for dropped in ("--model.methods.best_of_n.init_args.n", "--model.methods.svdd_mc.init_args.num_candidates",
                        "--model.methods.svdd_mc.init_args.value.init_args.network"):
            del args[args.index(dropped):args.index(dropped) + 2]
        main_decode(args)

    run = tmp_path / "run"
    decode(run, "--data.num_samples", "8", "--data.batch_size", "8")
    base = read_config("configs/dna/finetune.yaml")
    base["trainer"].update(max_steps=3, val_check_interval=3, limit_val_batches=1, logger=False,
                           default_root_dir=str(tmp_path / "fit"))
    base["trainer"]["callbacks"][0]["init_args"]["directory"] = str(tmp_path / "fit" / "model")
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(base))
    main_train(["fit", "--config", str(tmp_path / "finetune.yaml"), "--config", "configs/dna/finetune_from_run.yaml",
                "--model.model", str(tiny["mdlm"]), "--data.model", str(tiny["mdlm"]), "--data.samples", str(run),
                "--data.val_samples", "2", "--data.batch_size", "4",
                "--data.anchor_data.init_args.path", str(regions), "--data.anchor_data.init_args.batch_size", "4", *quiet])
    meta = checkpoints.metadata(tmp_path / "fit" / "model")
    assert meta["finetuning"]["samples"]["method"] == "svdd_pm" and meta["finetuning"]["samples"]["num_train"] == 6
    assert meta["train_seconds"] > 0 and "val/loss" in meta
    out = tmp_path / "from_export"
    decode(out, "--data.num_samples", "2", "--model.model", str(tmp_path / "fit" / "model"))
    rows = read_decode_run(out, "pretrained")
    assert rows[1] == [0, 1] and all(len(s) == LENGTH for s in rows[2])


@pytest.mark.parametrize("extra, message", [
    (["--model.kl_weight", "-1"], "model.kl_weight and model.data_weight must be >= 0"),
    (["--data.alpha", "0"], "data.alpha must be > 0"),
    (["--data.num_samples", "32"], "data.val_samples must be >= 1 and below data.num_samples"),
    (["--data.cache_dir", "null"], "data.decoder needs data.reward, data.cache_dir and data.num_samples"),
    (["--data.samples", "results/dna"], "give either data.samples"),
])
def test_bad_fine_tuning_settings_are_one_line_errors(tiny, extra, message, keep_matmul_precision):
    from svdd_lightning.lightning.cli import main_train

    with pytest.raises(SystemExit) as exit_info:
        main_train(["fit", "--config", "configs/dna/finetune.yaml", "--model.model", str(tiny["mdlm"]),
                    "--data.model", str(tiny["mdlm"]), *extra])
    text = str(exit_info.value)
    assert message in text and "\n" not in text.strip()
