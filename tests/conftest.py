import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Test models are tiny and gain nothing from threads; OpenMP spinning on a busy 2-core box costs 100x.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
