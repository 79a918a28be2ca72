"""Reward-guided decoding: ``python decode.py predict --config configs/dna/compare.yaml [--output_dir DIR]``.

Runs every method of the config on the same sample indices and writes FASTA, samples.csv,
summary.json and a reward histogram (see svdd_lightning/lightning/writer.py).
"""
from svdd_lightning.lightning.cli import main_decode

if __name__ == "__main__":
    main_decode()
