"""Shared test setup."""
import pytest
import torch


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
