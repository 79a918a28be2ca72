"""Shared test setup."""
import pytest
import torch

# pytest-xdist (pytest.ini: --dist loadfile --no-loadscope-reorder) hands each worker the next test file in
# collection order. The longest files go first, so that the suite does not end with one worker running a
# long file while the others wait (xdist's own order, by number of tests, put them last). Seconds per file
# from `python -m pytest --durations=0` on 2 cores; the other files take under 20 s each.
LONGEST_FIRST = ["test_shipped_models.py", "test_ddp.py", "test_docs.py", "test_images_pipeline.py",
                 "test_dna_pipeline.py", "test_utr.py", "test_devices.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests keep their order


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tests use tiny tensors: extra intra-op threads only spin-wait on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def inference_mode():
    """Run a test under torch.inference_mode, as decoding runs in Lightning's predict loop."""
    with torch.inference_mode():
        yield
