"""The DataModule base shared by the domains' data sets: train / validation / test TensorDatasets."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, TensorDataset


class SplitDataModule(L.LightningDataModule):
    """A subclass's ``setup`` fills ``datasets`` under the keys of ``splits`` (train, validation,
    test); this base serves them as shuffled (train, last partial batch dropped) and ordered loaders."""

    splits: tuple[str, str, str] = ("train", "validation", "test")

    def __init__(self, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.datasets: dict[str, TensorDataset] = {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits[0], True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits[1], False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits[2], False)
