"""A decoding run's molecule files: SMILES per method and a drawing of each method's best molecules."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from rdkit.Chem import Draw

from ...sample_files import SampleFiles
from .rewards import parse


class MoleculeFiles(SampleFiles):
    """``<method>.smi`` (SMILES, name and reward per line; invalid samples as ``*``, RDKit's empty
    SMILES placeholder) and ``<method>_best.png``: the ``grid_size`` best valid distinct molecules,
    drawn with RDKit under a title naming the method and the reward, each with its reward underneath."""

    column = "smiles"

    def __init__(self, grid_size: int = 16, per_row: int = 4) -> None:
        if grid_size < 1 or per_row < 1:
            raise ValueError(f"MoleculeFiles.grid_size and per_row must be >= 1, got {grid_size} and {per_row}")
        self.grid_size, self.per_row = grid_size, per_row

    def write(self, output_dir: Path, method: str, rows: list[dict]) -> None:
        with open(output_dir / f"{method}.smi", "w") as handle:
            for r in rows:
                handle.write(f"{r['sample'] or '*'}\t{method}_{r['index']}\treward={r['reward']:.4f}\n")
        best: dict[str, float] = {}
        for r in sorted(rows, key=lambda r: -r["reward"]):
            if r["sample"] and r["sample"] not in best:
                best[r["sample"]] = r["reward"]
            if len(best) == self.grid_size:
                break
        if best:
            grid = Draw.MolsToGridImage([parse(s) for s in best], molsPerRow=self.per_row, subImgSize=(220, 180),
                                        legends=[f"{self.reward_name} {v:.3f}" for v in best.values()])
            title = f"{method}: the {len(best)} best valid distinct of {len(rows)} molecules by {self.reward_name}"
            _titled(grid, title).save(output_dir / f"{method}_best.png")


def _titled(image: Image.Image, title: str) -> Image.Image:
    """``image`` under a white band holding ``title``."""
    font = ImageFont.load_default(size=16)
    band = 30
    out = Image.new("RGB", (image.width, image.height + band), "white")
    out.paste(image, (0, band))
    ImageDraw.Draw(out).text((8, 6), title, fill="black", font=font)
    return out
