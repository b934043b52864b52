import os

# Nothing may reach a model hub: every model in these tests is built from a config or loaded from a local path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    """An untrained tiny model saved to disk: fast to build, exercises every code path but accuracy."""
    from finecaption_ros.train import TrainSettings, new_model

    torch.manual_seed(0)
    model, tokenizer = new_model(TrainSettings())
    directory = tmp_path_factory.mktemp("random_model")
    model.save_pretrained(directory, tokenizer)
    return directory


@pytest.fixture(scope="session")
def default_captioner():
    from finecaption_ros.captioner import Captioner

    return Captioner.from_pretrained()
