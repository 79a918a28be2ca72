"""Shared test setup."""
import os
from unittest import mock

import pytest
import torch

# pytest-xdist (pytest.ini: --dist loadfile --no-loadscope-reorder) hands each worker the next test file in
# collection order. The longest files go first, so that the suite does not end with one worker running a
# long file while the others wait (xdist's own order, by number of tests, put them last). Seconds per file
# (`python -m pytest --durations=0`, 2 cores, December 2026): test_ddp 164 s, test_docs 101,
# test_images_pipeline 61, test_dna_pipeline 44, test_shipped_models 31, test_utr 29, test_docking 26, test_ddp_fit 24,
# test_molecule_decoding 21; every other file under 20 s.
LONGEST_FIRST = ["test_ddp.py", "test_docs.py", "test_images_pipeline.py", "test_dna_pipeline.py",
                 "test_shipped_models.py", "test_utr.py", "test_docking.py", "test_ddp_fit.py",
                 "test_molecule_decoding.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests keep their order


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tests use tiny tensors: extra intra-op threads only spin-wait on a loaded 2-core machine. A train.py or
    decode.py run in a test's process sets the process's threads (svdd_lightning.threads) from
    OMP_NUM_THREADS, else from the available cores: without this the first such run left a worker with
    2 threads (CI exports OMP_NUM_THREADS=2) for all its later tests, two workers x two threads on two
    cores (the shipped GDSS model's test took 76 s instead of 16 s). Subprocesses inherit it too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread_each_test():
    """A test that sets the torch threads (on purpose, or through a run) hands the next one a single thread."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture
def inference_mode():
    """Run a test under torch.inference_mode, as decoding runs in Lightning's predict loop."""
    with torch.inference_mode():
        yield
