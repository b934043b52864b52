"""The captioner in its own process (ros_support/captioner_process.py): the same captions as in process, through
shared memory, with several workers at once; errors keep their kind; a killed child is restarted; nothing left
behind."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from finecaption_ros.data.scenes import SceneGenerator
from finecaption_ros.ros_support import captioner_process
from finecaption_ros.ros_support.captioner_process import CaptionerProcess, CaptionerProcessError
from finecaption_ros.ros_support.startup import StartupError


def _frame(width: int, height: int, seed: int):
    scene = SceneGenerator(height=height, width=width, seed=seed, split="train").sample()
    return scene.image, scene.labels


def _texts(results):
    return [[(c.region_id, c.attribute, c.caption, c.bbox, c.mask_area) for c in frame] for frame in results]


def _segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("psm_*")} if Path("/dev/shm").is_dir() else set()


def test_captioner_process_captions_as_in_process_and_survives_its_child(default_captioner, monkeypatch):
    before = _segments()
    child = CaptionerProcess(num_threads=1, workers=2)
    try:
        assert (child.model_id, child.backend) == (default_captioner.model_id, default_captioner.backend)
        assert child.supported_attributes == default_captioner.supported_attributes
        small = _frame(256, 256, 2)
        camera = [_frame(640, 480, 1) + (None,), small + ([int(np.unique(small[1])[-1])],)]
        expected = _texts(default_captioner.caption_frames(camera, task="dense"))
        assert _texts(child.caption_frames(camera, task="dense")) == expected
        image, labels = camera[0][:2]
        attrs = default_captioner.caption(image, labels, task="attribute", attributes=["color", "size"])
        assert _texts([child.caption(image, labels, task="attribute", attributes=["color", "size"])]) == \
            _texts([attrs])

        # Two workers at once, each on its own channel; a 1280x720 batch grows its segment.
        big = [_frame(1280, 720, 3) + (None,)] * 2
        expected_big = _texts(default_captioner.caption_frames(big))
        got = {}
        threads = [threading.Thread(target=lambda k=k, f=f: got.__setitem__(k, _texts(child.caption_frames(f))))
                   for k, f in enumerate((camera, big))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert got == {0: expected, 1: expected_big}

        # No room left in /dev/shm (a default Docker container has 64 MiB): the frames go through the socket.
        with monkeypatch.context() as m:
            m.setattr(captioner_process, "_shm_room", lambda: 0)
            assert _texts(child.caption_frames(big * 2)) == expected_big * 2  # more than any segment holds yet
            assert any(channel.shm is None for channel in child._channels)

        # The captioner's input errors stay ValueErrors (the pipeline's "captioner refused the frame").
        with pytest.raises(ValueError, match="unknown task 'bogus'"):
            child.caption(image, labels, task="bogus")
        with pytest.raises(ValueError, match="unknown attribute"):
            child.caption(image, labels, task="attribute", attributes=["smell"])

        # A child killed (out of memory, say): that call fails naming it, the next one gets a new child.
        old_pid = child._proc.pid
        os.kill(old_pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(CaptionerProcessError, match="killed by signal 9"):
            child.caption(image, labels)
        assert child._proc.pid != old_pid and child._proc.poll() is None
        assert _texts([child.caption(image, labels)]) == [expected[0]]
        assert child.rss_mb() > 50
    finally:
        child.close()
    assert child._proc.poll() == 0, "the child exits by itself when its sockets close"
    assert _segments() <= before, "every shared-memory segment is unlinked"


def test_captioner_process_start_up_errors_are_one_line(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(StartupError, match=f"model not found: .*{tmp_path.name}/nothing"):
        CaptionerProcess(model_path=str(tmp_path / "nothing"))
    assert time.monotonic() - t0 < 120


def test_the_grounded_relations_parameter_reaches_the_captioner_in_and_out_of_process(random_model_dir):
    """The node's `grounded_relations` goes through load_captioner to the captioner, in the child process too: an
    untrained model's relations differ between the two settings, so each must match its own in-process twin."""
    from finecaption_ros.captioner import Captioner
    from finecaption_ros.ros_support.startup import load_captioner

    image, labels = _frame(256, 256, 5)
    asked = {"task": "attribute", "attributes": ["relative_location"]}
    expected = {}
    for grounded in (True, False):
        assert load_captioner(str(random_model_dir), "torch", "", 1,
                              grounded_relations=grounded).grounded_relations is grounded
        twin = Captioner.from_pretrained(random_model_dir, grounded_relations=grounded)
        expected[grounded] = _texts([twin.caption(image, labels, **asked)])
    assert expected[True] != expected[False]
    for grounded in (True, False):
        child = load_captioner(str(random_model_dir), "torch", "", 1, child_process=True,
                               grounded_relations=grounded)
        try:
            assert _texts([child.caption(image, labels, **asked)]) == expected[grounded]
        finally:
            child.close()
