"""Fixtures for the engine-layer tests: one ONNX export per session (through the CLI), and the parity model.

The parity model is the packaged default model when it exists (the trained one), else `$FINECAPTION_PARITY_MODEL`,
else the random-init tiny model; tests that depend on which say so in their output.
"""
import os
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="session")
def onnx_dir(random_model_dir, tmp_path_factory):
    """The random model exported once, through `finecaption export-onnx` (so the CLI path is covered too): fp32
    graphs, and the fp16 ones in its fp16/ subdirectory, where the TensorRT builder looks for them."""
    from finecaption_ros.engines.cli import main

    out = tmp_path_factory.mktemp("onnx_export")
    assert main(["export-onnx", "--model", str(random_model_dir), "--out", str(out)]) == 0
    assert main(["export-onnx", "--model", str(random_model_dir), "--out", str(out / "fp16"),
                 "--precision", "fp16"]) == 0
    return out


@pytest.fixture(scope="session")
def parity_model_dir(random_model_dir):
    from finecaption_ros.model.finecaption import DEFAULT_MODEL_DIR

    explicit = os.environ.get("FINECAPTION_PARITY_MODEL")
    if explicit:
        return Path(explicit)
    if (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        return DEFAULT_MODEL_DIR
    return random_model_dir


@pytest.fixture(scope="session")
def parity_onnx_dir(parity_model_dir, random_model_dir, onnx_dir, tmp_path_factory):
    if parity_model_dir == random_model_dir:
        return onnx_dir
    from finecaption_ros.engines.export import export_onnx

    out = tmp_path_factory.mktemp("parity_onnx")
    export_onnx(parity_model_dir, out)
    return out


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """An ONNX Runtime captioner sets torch to one thread for its process; the rest of the suite wants its own."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def parity_fp16_dir(parity_model_dir, random_model_dir, onnx_dir, tmp_path_factory):
    """The parity model's fp16 graphs."""
    if parity_model_dir == random_model_dir:
        return onnx_dir / "fp16"
    from finecaption_ros.engines.export import export_onnx

    out = tmp_path_factory.mktemp("parity_onnx_fp16")
    export_onnx(parity_model_dir, out, precision="fp16")
    return out
