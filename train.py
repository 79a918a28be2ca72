"""Train the project's models: ``python train.py fit --config configs/dna/pretrain.yaml``.

The LightningModule and DataModule come from the config (``model.class_path``, ``data.class_path``).
"""
from svdd_lightning.lightning.cli import main_train

if __name__ == "__main__":
    main_train()
