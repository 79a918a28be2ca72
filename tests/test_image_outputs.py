"""Image outputs of the decode job: samples stored as PNGs in the parts, per-sample PNGs, grids and CSV paths."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from svdd_lightning.domains.images.outputs import ImageFiles, from_pil
from svdd_lightning.lightning.decoding import PARTS
from svdd_lightning.lightning.writer import DesignWriter, FastaFiles, write_outputs


def uint8_valued(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).float() / 255


def write_batch(writer: DesignWriter, rows: list[dict]) -> dict:
    """What the predict loop does with one batch of :class:`DecodingModule` results on rank 0."""
    stats = [{"method": m, "n": sum(r["method"] == m for r in rows), "seconds": 1.0, "denoiser_calls": 4,
              "gradient_calls": 0, "reward_calls": 2, "reward_failures": 0, "value_calls": 0}
             for m in dict.fromkeys(r["method"] for r in rows)]
    prediction = {"rows": rows, "stats": stats}
    writer.write_record(0, prediction)
    return prediction


@pytest.mark.parametrize("channels", [1, 3])
def test_encode_decode_round_trip_is_exact_on_8_bit_images(channels):
    files = ImageFiles()
    image = uint8_valued(channels, 5, 7)
    stored = files.encode(image)
    assert isinstance(stored, str) and json.loads(json.dumps(stored)) == stored
    decoded = files.decode(stored)
    assert decoded.dtype == torch.float32 and decoded.shape == (channels, 5, 7)
    assert torch.equal(decoded, image)


def test_encode_rounds_to_8_bits_and_refuses_other_channel_counts():
    files = ImageFiles()
    image = torch.tensor([[[0.0, 0.5, 1.0, 1.2]]])
    assert torch.equal(files.decode(files.encode(image)), torch.tensor([[[0, 128, 255, 255]]]) / 255)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        files.encode(torch.zeros(2, 4, 4))


def test_write_outputs_writes_pngs_grid_csv_paths_and_summary(tmp_path):
    files = ImageFiles(grid_size=3, per_row=2)
    writer = DesignWriter(str(tmp_path), set_metrics={"mean_pixel": lambda xs: float(torch.stack(xs).mean())},
                          sample_files=files)
    images = {(m, i): uint8_valued(3 if m == "svdd_pm" else 1, 6, 4, seed=10 * i + len(m))
              for m in ("pretrained", "svdd_pm") for i in range(4)}
    images[("pretrained", 3)] = images[("pretrained", 2)]  # a duplicate: 3 distinct of 4
    rows = [{"method": m, "index": i, "sample": x, "reward": 0.1 * i, "score": float(i)} for (m, i), x in images.items()]
    write_batch(writer, rows[:5])
    write_batch(writer, rows[5:])
    summary = write_outputs(tmp_path, ["score"], writer.set_metrics, {"score": None}, files)

    for (m, i), x in images.items():
        with Image.open(tmp_path / m / f"{i:05d}.png") as png:
            assert png.size == (4, 6) and png.mode == ("RGB" if m == "svdd_pm" else "L")
            assert torch.equal(from_pil(png), x)
    with open(tmp_path / "samples.csv") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["method", "index", "image", "reward", "score"]
    assert [(r["method"], r["index"], r["image"]) for r in table] == [
        (m, str(i), f"{m}/{i:05d}.png") for m, i in sorted(images)]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert set(summary) == {"pretrained", "svdd_pm"}
    assert summary["pretrained"]["n"] == 4 and summary["pretrained"]["distinct_fraction"] == 0.75
    assert summary["svdd_pm"]["distinct_fraction"] == 1.0
    expected = torch.stack([x for (m, _), x in images.items() if m == "svdd_pm"]).mean()
    assert summary["svdd_pm"]["mean_pixel"] == pytest.approx(float(expected))
    for m in summary:
        with Image.open(tmp_path / f"{m}_grid.png") as grid:
            assert grid.size[0] > 100 and grid.size[1] > 100


def test_fasta_parts_and_outputs_are_unchanged_by_the_sample_hook(tmp_path):
    writer = DesignWriter(str(tmp_path), sample_files=FastaFiles())
    rows = [{"method": "svdd_pm", "index": i, "sample": "ACGT"[i:] + "A" * i, "reward": 0.5 * i} for i in range(2)]
    prediction = write_batch(writer, rows)
    stamped = {**prediction, "stats": [{**s, "fingerprint": None} for s in prediction["stats"]]}
    assert (tmp_path / PARTS / "rank0.jsonl").read_text() == json.dumps(stamped) + "\n"
    write_outputs(tmp_path, [], {}, {})
    assert (tmp_path / "svdd_pm.fasta").read_text() == ">svdd_pm_0 reward=0.0000\nACGT\n>svdd_pm_1 reward=0.5000\nCGTA\n"
    with open(tmp_path / "samples.csv") as handle:
        assert [r["sequence"] for r in csv.DictReader(handle)] == ["ACGT", "CGTA"]
