import pytest
import torch

from neuralcleanse.attacks import BadNets, patch_trigger
from neuralcleanse.data.dataset import DatasetSplits
from neuralcleanse.training import train_model
from tiny_task import SIDE, TARGET, synthetic


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Test models are tiny and gain nothing from threads; OpenMP spinning on a busy 2-core box costs 100x.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def data() -> DatasetSplits:
    return DatasetSplits(synthetic(200, seed=1), synthetic(50, seed=2))


@pytest.fixture(scope="session")
def trigger():
    return patch_trigger((1, SIDE, SIDE), size=2, position="bottom-right", margin=1)


@pytest.fixture(scope="session")
def infected(data, trigger):
    """A tiny BadNets model (trigger → TARGET) and its training report."""
    bn = BadNets([trigger], [TARGET], poison_rate=0.1, seed=0)
    return train_model(data, "tiny", badnets=bn, epochs=8, lr=5e-3, batch_size=64, progress=False)


@pytest.fixture(scope="session")
def clean_model(data):
    model, _ = train_model(data, "tiny", epochs=8, lr=5e-3, batch_size=64, progress=False)
    return model
