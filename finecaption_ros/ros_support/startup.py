"""Loading the node's captioner (no rclpy): start-up errors as one clear line, and the inference thread count."""
from __future__ import annotations

import os


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, missing model); the message is the one log line."""


def inference_threads(num_threads: int = 0, workers: int = 1) -> int:
    """The num_threads parameter (per inference worker), 0 resolved: the cores less one left to DDS and the camera,
    shared by the workers, at least one each. torch's OpenMP workers spin-wait between ops, so a thread more than
    the free cores costs far more than it gives (measured in README, "The ROS 2 node")."""
    return num_threads or max(1, (len(os.sched_getaffinity(0)) - 1) // workers)


def inference_workers(requested: int, cameras: int, backend: str) -> int:
    """The inference_workers parameter, 0 resolved: one per camera up to the core count (a camera's frames go to
    one worker at a time, so more workers than cameras would idle), one for a backend that runs one call at a
    time. An explicit count such a backend cannot run is a StartupError."""
    from ..engines import SERIAL_BACKENDS

    if backend in SERIAL_BACKENDS:
        if requested > 1:
            raise StartupError(f"invalid parameter: inference_workers = {requested}, but the {backend} backend runs "
                               "one caption at a time; set inference_workers to 0 or 1")
        return 1
    return requested or max(1, min(cameras, len(os.sched_getaffinity(0))))


def load_captioner(model_path: str, backend: str, engine_dir: str, num_threads: int = 0, child_process: bool = False,
                   workers: int = 1, grounded_relations: bool = True, **engine_options):
    """Captioner.from_pretrained with start-up errors turned into one clear line; with `child_process`, the same
    captioner in a child process (captioner_process.py) that `workers` threads may call at once."""
    if child_process:
        from .captioner_process import CaptionerProcess

        return CaptionerProcess(model_path, backend, engine_dir, num_threads, workers,
                                grounded_relations=grounded_relations, **engine_options)
    try:
        from ..captioner import Captioner
    except ImportError as err:
        raise StartupError(f"cannot import the captioner: {err}") from err
    try:
        # True means "where the model allows": a model of another world decodes its relations freely.
        options = {"num_threads": inference_threads(num_threads), "grounded_relations": None if grounded_relations
                   else False}
        if backend == "tensorrt":  # the plan options mean nothing to the other backends
            options.update(engine_options)
        return Captioner.from_pretrained(path=model_path or None, backend=backend, engine_dir=engine_dir or None,
                                         **options)
    except FileNotFoundError as err:
        raise StartupError(f"model not found: {err}") from err
    except (ValueError, ImportError, RuntimeError, OSError) as err:
        raise StartupError(f"cannot load the model (backend {backend!r}): {err}") from err


def warm_up(captioner) -> float:
    """One small caption before the node reports ready, so the first real frame is not the slow one; seconds taken.
    A model that cannot caption at all fails here, clearly, at start-up."""
    import time

    import numpy as np

    t0 = time.perf_counter()
    image = np.zeros((64, 64, 3), np.uint8)
    labels = np.zeros((64, 64), np.int32)
    labels[16:48, 16:48] = 1
    try:
        captioner.caption(image, labels, task="dense", max_new_tokens=2)
    except Exception as err:
        raise StartupError(f"the model cannot caption a test frame: {type(err).__name__}: {err}") from err
    return time.perf_counter() - t0
