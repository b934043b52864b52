"""Unit tests of the rclpy-free node helpers: image conversion, stamp pairing, latest-frame slot, regions, caption
reuse, the pipeline, annotation and parameter validation."""
from __future__ import annotations

import array
import os
import threading
import time
import types

import numpy as np
import pytest
from fakes import FakeCaptioner

from finecaption_ros.ros_support import image_codec as codec
from finecaption_ros.ros_support.annotate import annotate
from finecaption_ros.ros_support.errors import ECHO_LIMIT, LINE_LIMIT, FrameError, echo
from finecaption_ros.ros_support.latest import REQUEST, InferenceWorkers, InFlight, LatestSlot, PairedFrame
from finecaption_ros.ros_support.pairing import IMAGE, MASK, StampPairer
from finecaption_ros.ros_support.params import NODE_PARAMS, validate
from finecaption_ros.ros_support.pipeline import CaptionPipeline, PipelineConfig
from finecaption_ros.ros_support.regions import bbox_of, select_regions
from finecaption_ros.ros_support.reuse import CaptionReuse
from finecaption_ros.ros_support.sources import SourceError, open_source, upscale
from finecaption_ros.ros_support.startup import StartupError, inference_threads, inference_workers


def msg_from(fields: dict, **override):
    return types.SimpleNamespace(**{**fields, **override})


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------- image codec
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_round_trip(encoding):
    msg = msg_from(codec.encode(RGB, encoding))
    assert msg.step == 5 * (4 if "a" in encoding[3:] else 3)
    np.testing.assert_array_equal(codec.decode_image(msg), RGB)


def test_bgr_bytes_are_swapped_on_the_wire():
    msg = msg_from(codec.encode(RGB, "bgr8"))
    first = bytes(msg.data[:3])
    assert first == bytes(RGB[0, 0, ::-1].tolist())


def test_mono8_image_becomes_grey_rgb():
    grey = RNG.integers(0, 256, size=(4, 3), dtype=np.uint8)
    msg = types.SimpleNamespace(height=4, width=3, encoding="mono8", is_bigendian=0, step=3,
                                data=array.array("B", grey.tobytes()))
    out = codec.decode_image(msg)
    assert out.shape == (4, 3, 3)
    np.testing.assert_array_equal(out[..., 1], grey)


def test_padded_rows_are_read_with_step():
    padded = np.zeros((6, 20), dtype=np.uint8)
    padded[:, :15] = RGB.reshape(6, 15)
    msg = types.SimpleNamespace(height=6, width=5, encoding="rgb8", is_bigendian=0, step=20,
                                data=padded.tobytes())
    np.testing.assert_array_equal(codec.decode_image(msg), RGB)


@pytest.mark.parametrize("encoding,dtype", [("mono8", np.uint8), ("mono16", np.uint16), ("32SC1", np.int32)])
def test_mask_encodings_round_trip(encoding, dtype):
    labels = RNG.integers(0, 200, size=(7, 9)).astype(np.int32)
    msg = msg_from(codec.encode(labels, encoding))
    out = codec.decode_mask(msg)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, labels)


def test_big_endian_mono16_mask():
    labels = np.array([[1, 300], [65535, 0]], dtype=np.uint16)
    msg = types.SimpleNamespace(height=2, width=2, encoding="mono16", is_bigendian=1, step=4,
                                data=labels.astype(">u2").tobytes())
    np.testing.assert_array_equal(codec.decode_mask(msg), labels.astype(np.int32))


@pytest.mark.parametrize("override,reason", [
    ({"encoding": "yuv422"}, "unsupported_encoding"),
    ({"encoding": "16UC3"}, "unsupported_encoding"),
    ({"data": array.array("B", bytes(10))}, "short_data"),
    ({"step": 4}, "bad_step"),
    ({"height": 0}, "empty_image"),
])
def test_bad_images_raise_frame_errors_with_reasons(override, reason):
    msg = msg_from(codec.encode(RGB, "rgb8"), **override)
    with pytest.raises(FrameError) as err:
        codec.decode_image(msg)
    assert err.value.reason == reason
    assert str(err.value)  # a readable line


def test_too_large_is_refused_before_reading_data():
    msg = types.SimpleNamespace(height=4320, width=7680, encoding="rgb8", is_bigendian=0, step=7680 * 3,
                                data=b"")  # no data at all: the size check comes first
    with pytest.raises(FrameError) as err:
        codec.check_image(msg, max_pixels=3840 * 2160 * 2)
    assert err.value.reason == "too_large" and "7680x4320" in str(err.value)


def test_negative_32sc1_labels_are_refused():
    msg = msg_from(codec.encode(np.array([[-1, 2]]), "32SC1"))
    with pytest.raises(FrameError) as err:
        codec.decode_mask(msg)
    assert err.value.reason == "bad_mask"


def test_a_long_encoding_is_not_echoed_whole():
    msg = msg_from(codec.encode(RGB, "rgb8"), encoding="e" * 10_000)
    with pytest.raises(FrameError) as err:
        codec.decode_image(msg)
    assert err.value.reason == "unsupported_encoding"
    line = str(err.value)
    assert line.startswith("image encoding 'eeee") and "(10000 characters)" in line and "use one of rgb8" in line
    assert len(line) < 200


def test_frame_error_messages_are_bounded():
    line = str(FrameError("captioner_error", "captioner refused the frame: unknown attribute " + "q" * 50_000))
    assert len(line) == LINE_LIMIT and line.startswith("captioner refused") and line.endswith("characters)")


def test_mask_encoding_of_an_rgb_image_is_unsupported():
    with pytest.raises(FrameError) as err:
        codec.decode_mask(msg_from(codec.encode(RGB, "rgb8")))
    assert err.value.reason == "unsupported_encoding"


# ---------------------------------------------------------------------------------------------------- pairing
def test_exact_pairing_in_either_order():
    pairer = StampPairer()
    assert pairer.add(IMAGE, 100, "i100", 0).pair is None
    result = pairer.add(MASK, 100, "m100", 1)
    assert result.pair == ("i100", "m100") and result.stamp_ns == 100
    assert pairer.add(MASK, 200, "m200", 2).pair is None
    assert pairer.add(IMAGE, 200, "i200", 3).pair == ("i200", "m200")
    assert pairer.pending(IMAGE) == pairer.pending(MASK) == 0


def test_slop_pairs_the_nearest_stamp():
    pairer = StampPairer(slop_ns=10)
    pairer.add(MASK, 95, "m95", 0)
    pairer.add(MASK, 103, "m103", 0)
    result = pairer.add(IMAGE, 101, "i101", 0)
    assert result.pair == ("i101", "m103")
    assert [(d.kind, d.stamp_ns, d.why) for d in result.dropped] == [(MASK, 95, "superseded")]


def test_no_pair_outside_the_slop():
    pairer = StampPairer(slop_ns=10)
    pairer.add(MASK, 100, "m", 0)
    assert pairer.add(IMAGE, 111, "i", 0).pair is None


def test_unmatched_messages_time_out():
    pairer = StampPairer(timeout_ns=1000)
    pairer.add(MASK, 5, "orphan", now_ns=0)
    assert pairer.expire(now_ns=900) == []
    dropped = pairer.expire(now_ns=1500)
    assert [(d.kind, d.stamp_ns, d.why) for d in dropped] == [(MASK, 5, "timeout")]
    assert pairer.pending(MASK) == 0


def test_pending_is_bounded():
    pairer = StampPairer(max_pending=3)
    dropped = []
    for stamp in range(10):
        dropped += pairer.add(IMAGE, stamp, stamp, 0).dropped
    assert pairer.pending(IMAGE) == 3
    assert [d.stamp_ns for d in dropped] == list(range(7)) and {d.why for d in dropped} == {"overflow"}


# ---------------------------------------------------------------------------------------------------- latest slot
def test_latest_slot_keeps_only_the_newest():
    slot = LatestSlot()
    assert slot.put(1) is None
    assert slot.put(2) == 1
    assert slot.put(3) == 2
    assert slot.dropped == 2
    assert slot.take(0) == 3
    assert slot.take(0.01) is None


def test_latest_slot_wakes_a_waiting_worker():
    slot = LatestSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(5)))
    worker.start()
    slot.put("frame")
    worker.join(5)
    assert got == ["frame"]
    slot.close()
    assert slot.take(5) is None


def frame(camera: str, stamp: int = 0, received: float = 0.0) -> PairedFrame:
    return PairedFrame(camera, None, None, stamp, received, 0.0)


def test_latest_slot_claims_keep_each_cameras_captions_in_arrival_order():
    slot = LatestSlot()
    assert slot.claim(frame("a", 10, received=2.0))
    assert not slot.claim(frame("a", 9, received=1.0))  # arrived earlier, finished later: dropped
    assert slot.claim(frame("b", 9, received=1.0))  # another camera's order is its own
    assert slot.claim(frame("a", 3, received=3.0))  # a bag that loops: stamps go back, arrivals do not


def test_inference_workers_run_in_parallel_publish_in_order_and_survive_errors():
    slot, lock = LatestSlot(), threading.Lock()
    published, busy, most, errors, raised = {c: [] for c in "abcd"}, [0], [0], [], []

    def on_frames(frames):
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        try:
            time.sleep(0.02 + 0.03 * (frames[0].stamp_ns % 3 == 0))  # some batches slower: finish out of order
            if not errors and not raised:  # the first batch fails (a given stamp may never reach a worker)
                raised.append(True)
                raise RuntimeError("boom")
            for f in frames:
                if slot.claim(f):
                    published[f.camera].append(f.stamp_ns)
        finally:
            with lock:
                busy[0] -= 1

    workers = InferenceWorkers(slot, 2, on_frames, on_request=None, on_error=errors.append)
    for stamp in range(30):
        for camera in "abcd":
            slot.put(frame(camera, stamp, received=time.monotonic()), camera)
        time.sleep(0.01)
    deadline = time.monotonic() + 10
    while (slot.waiting or busy[0]) and time.monotonic() < deadline:
        time.sleep(0.01)
    slot.close()
    workers.join(5)
    assert most[0] == 2  # both workers had a batch at the same time
    for camera, stamps in published.items():
        assert stamps == sorted(set(stamps)) and stamps[-1] == 29, camera  # in order, the newest one out
    assert [str(e) for e in errors] == ["boom"] and not any(t.is_alive() for t in workers.threads)


def test_a_worker_hands_the_captioner_the_next_frames_before_it_publishes_the_last_ones():
    """The model never waits for messages to be built: batch n+1 is handed over between batch n's answer and its
    publishing. A request waits for the batch in flight to be published; a failed answer costs only its batch."""
    slot, events = LatestSlot(max_requests=4), []

    def on_frames(frames):
        stamp = frames[0].stamp_ns
        events.append(("start", stamp))

        def wait():  # the model at work; the camera's next frame arrives meanwhile
            if stamp < 7:
                slot.put(frame("", stamp + 1, received=time.monotonic()))
            if stamp == 4:
                slot.put_request("service")
            if stamp == 1:
                raise RuntimeError("the child died")
            events.append(("answer", stamp))
        return InFlight(wait, lambda: events.append(("publish", stamp)))

    errors = []
    workers = InferenceWorkers(slot, 1, on_frames, on_request=lambda r: events.append(("request", r)),
                               on_error=errors.append)
    slot.put(frame("", 0, received=time.monotonic()))
    deadline = time.monotonic() + 10
    while ("publish", 7) not in events and time.monotonic() < deadline:
        time.sleep(0.01)
    slot.close()
    workers.join(5)
    assert [str(e) for e in errors] == ["the child died"]
    assert [s for kind, s in events if kind == "publish"] == [0, 2, 3, 4, 5, 6, 7]
    assert events[:6] == [("start", 0), ("answer", 0), ("start", 1), ("publish", 0), ("start", 2), ("answer", 2)]
    # Batch 4's answer came with a request waiting and a frame: the alternation gives the request its turn, once
    # batch 4 is out; the frame follows.
    k = events.index(("answer", 4))
    assert events[k:k + 4] == [("answer", 4), ("publish", 4), ("request", "service"), ("start", 5)]
    k = events.index(("answer", 5))
    assert events[k:k + 3] == [("answer", 5), ("start", 6), ("publish", 5)]


def test_the_pipeline_hands_a_submitting_captioner_its_call_at_begin():
    """With a captioner that can `submit` (the child process), the call starts in `begin`; `wait` collects it and
    `finish` gives what process_batch gives."""
    class Submitting(FakeCaptioner):
        def __init__(self):
            super().__init__()
            self.submitted = 0

        def submit(self, frames, task, attributes, max_new_tokens):
            self.submitted += 1
            out = self.caption_frames(frames, task, attributes, max_new_tokens)
            return types.SimpleNamespace(result=lambda: out)

    captioner = Submitting()
    pipeline = CaptionPipeline(captioner, PipelineConfig(caption_reuse=False))
    image, labels = np.full((40, 60, 3), 90, np.uint8), np.zeros((40, 60), np.int32)
    labels[5:20, 5:20], labels[22:35, 30:50] = 1, 2
    batch = pipeline.begin([(image, labels)])
    assert captioner.submitted == 1 and batch.outputs is None
    results = pipeline.finish(pipeline.wait(batch))
    again = pipeline.process_batch([(image, labels)])
    assert [c.caption for c in results[0].captions] == [c.caption for c in again[0].captions]
    assert [c.region_id for c in results[0].captions] == [1, 2] and results[0].inference_s > 0


def test_inference_workers_and_threads_resolved_for_the_machine(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    assert inference_workers(0, 1, "torch") == 1  # one camera: one worker, as before
    assert inference_workers(0, 4, "onnxruntime") == 2  # one per camera, up to the cores
    assert inference_workers(3, 1, "torch") == 3
    assert inference_workers(0, 4, "tensorrt") == 1
    with pytest.raises(StartupError, match="inference_workers = 2.*tensorrt"):
        inference_workers(2, 4, "tensorrt")
    assert (inference_threads(0, 1), inference_threads(0, 2), inference_threads(3, 2)) == (1, 1, 3)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert (inference_threads(0, 1), inference_threads(0, 2)) == (7, 3)


# ---------------------------------------------------------------------------------------------------- regions
def test_select_regions_min_area_and_limit():
    labels = np.zeros((20, 20), np.int32)
    labels[0:10, 0:10] = 3  # 100 px
    labels[10:15, 0:10] = 7  # 50 px
    labels[15:17, 0:5] = 9  # 10 px
    labels[0:2, 10:12] = 200  # 4 px
    sel = select_regions(labels, min_area=5, max_regions=2)
    assert sel.ids == [3, 7] and sel.below_min_area == [200] and sel.over_limit == [9]
    assert bbox_of(labels == 7) == (0, 10, 10, 5)


# ---------------------------------------------------------------------------------------------------- reuse
def test_reuse_only_when_mask_and_pixels_barely_change():
    image = RNG.integers(0, 256, (50, 50, 3), dtype=np.uint8)
    mask = np.zeros((50, 50), bool)
    mask[10:30, 10:30] = True
    reuse = CaptionReuse(iou_threshold=0.9, pixel_threshold=4.0, max_age_s=10)
    key = (1, "dense", "")
    assert reuse.check(key, mask, image, 0).why == "new"
    reuse.store(key, mask, image, "caption", 0)
    noisy = np.clip(image.astype(int) + RNG.integers(-2, 3, image.shape), 0, 255).astype(np.uint8)
    assert reuse.check(key, mask, noisy, 1).result == "caption"
    shifted = np.roll(mask, 4, axis=1)  # IoU 16/24 = 0.67
    assert reuse.check(key, shifted, image, 1).why == "iou"
    changed = image.copy()
    changed[mask] = 255 - changed[mask]
    assert reuse.check(key, mask, changed, 1).why == "pixels"
    assert reuse.check(key, mask, image, 11).why == "age"


# ---------------------------------------------------------------------------------------------------- pipeline
def scene_labels():
    labels = np.zeros((40, 40), np.int32)
    labels[2:12, 2:12] = 5
    labels[20:35, 20:35] = 9
    labels[0:2, 38:40] = 11  # 4 px, below the default minimum
    return labels


def test_pipeline_reuses_unchanged_regions_and_recomputes_changed_ones():
    fake = FakeCaptioner()
    pipe = CaptionPipeline(fake, PipelineConfig(min_region_area=16))
    image = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    labels = scene_labels()
    first = pipe.process(image, labels, now_s=0)
    assert [c.region_id for c in first.captions] == [5, 9] and not any(c.reused for c in first.captions)
    assert ("regions_below_min_area", 1) == (first.problems[0][0], first.problems[0][2])
    assert fake.calls[-1]["ids"] == [5, 9]  # region 11 never reaches the model
    image2 = image.copy()
    image2[20:35, 20:35] = 0  # region 9 changes, region 5 does not
    second = pipe.process(image2, labels, now_s=1)
    assert [(c.region_id, c.reused) for c in second.captions] == [(5, True), (9, False)]
    assert fake.calls[-1]["ids"] == [9]
    assert fake.calls[-1]["context"] == [5, 9]  # the reused region is still the recomputed one's neighbour
    assert second.captions[0].caption == first.captions[0].caption
    assert second.captions[0].bbox == (2, 2, 10, 10) and second.captions[0].mask_area == 100
    # A service-style call never reuses.
    third = pipe.process(image2, labels, use_reuse=False, now_s=2)
    assert not any(c.reused for c in third.captions)


def test_pipeline_attribute_task_and_config_change_clears_reuse():
    fake = FakeCaptioner()
    pipe = CaptionPipeline(fake, PipelineConfig(task="attribute", attributes=("color", "size")))
    image = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    out = pipe.process(image, scene_labels(), now_s=0)
    assert [(c.region_id, c.attribute) for c in out.captions] == [(5, "color"), (5, "size"), (9, "color"),
                                                                  (9, "size")]
    assert len(pipe.reuse) == 4
    pipe.configure(PipelineConfig(task="dense"))
    assert len(pipe.reuse) == 0


def test_pipeline_empty_mask_and_region_limit():
    fake = FakeCaptioner()
    pipe = CaptionPipeline(fake, PipelineConfig(max_regions=1))
    image = np.zeros((40, 40, 3), np.uint8)
    empty = pipe.process(image, np.zeros((40, 40), np.int32))
    assert empty.captions == [] and empty.problems[0][0] == "empty_masks" and not fake.calls
    limited = pipe.process(image, scene_labels())
    assert [c.region_id for c in limited.captions] == [9]
    assert "regions_over_limit" in [p[0] for p in limited.problems]


def test_pipeline_global_task_needs_no_mask():
    pipe = CaptionPipeline(FakeCaptioner(), PipelineConfig(task="global"))
    out = pipe.process(np.zeros((8, 8, 3), np.uint8), None)
    assert [(c.region_id, c.caption) for c in out.captions] == [(0, "the whole image")]


def test_pipeline_turns_captioner_errors_into_frame_errors():
    pipe = CaptionPipeline(FakeCaptioner())
    with pytest.raises(FrameError) as err:
        pipe.process(np.zeros((8, 8, 3), np.uint8), scene_labels()[:8, :8] * 0 + 1, task="bogus")
    assert err.value.reason == "captioner_error" and "bogus" in str(err.value)
    with pytest.raises(FrameError, match="smell"):
        pipe.process(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.int32), task="attribute", attributes=["smell"])


def test_pipeline_size_mismatch_from_messages():
    pipe = CaptionPipeline(FakeCaptioner())
    image = msg_from(codec.encode(np.zeros((10, 10, 3), np.uint8), "rgb8"))
    mask = msg_from(codec.encode(np.ones((5, 10), np.int32), "mono8"))
    with pytest.raises(FrameError) as err:
        pipe.process_messages(image, mask)
    assert err.value.reason == "size_mismatch" and "10x10" in str(err.value) and "10x5" in str(err.value)


# ---------------------------------------------------------------------------------------------------- annotate
def test_annotate_draws_tint_boxes_and_a_caption_panel():
    image = np.full((64, 64, 3), 100, np.uint8)
    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 10:30] = 4
    caps = CaptionPipeline(FakeCaptioner()).process(image, labels, use_reuse=False).captions
    out = annotate(image, labels, caps, min_width=128)
    assert out.dtype == np.uint8 and out.shape[1] == 128 and out.shape[0] > 128  # 2x frame + caption panel
    assert not np.array_equal(out[40, 40], [100, 100, 100])  # inside region 4 (scaled): tinted
    np.testing.assert_array_equal(out[120, 120], [100, 100, 100])  # background untouched


# ---------------------------------------------------------------------------------------------------- parameters
def test_parameter_validation():
    current = {s.name: s.default for s in NODE_PARAMS}
    assert validate({"task": "dense"}, current) is None
    assert "one of" in validate({"task": "poem"}, current)
    assert "unknown attribute" in validate({"attributes": ["smell"]}, current)
    assert "non-empty" in validate({"task": "attribute", "attributes": []}, current)
    assert "within" in validate({"reuse_iou_threshold": 1.5}, current)
    assert "does not exist" in validate({"model_path": "/no/such/model"}, current)
    assert validate({"task": "attribute", "attributes": ["color"]}, current) is None
    # Declared one at a time: task first (attributes not declared yet), then attributes.
    assert validate({"task": "attribute"}, {}) is None
    assert "non-empty" in validate({"attributes": []}, {"task": "attribute"})


def test_a_batch_of_parameter_changes_is_validated_as_a_whole():
    current = {**{s.name: s.default for s in NODE_PARAMS}, "task": "dense", "attributes": []}
    # alone, the task is refused against the current (empty) list; with the new list in the same batch it is not
    assert "non-empty" in validate({"task": "attribute"}, current)
    assert validate({"task": "attribute", "attributes": ["color", "texture"]}, current) is None
    assert validate({"attributes": ["color", "texture"], "task": "attribute"}, current) is None  # in either order
    # one bad value refuses the whole batch, and the reason names it
    assert "unknown attribute(s) 'smell'" in validate({"task": "attribute", "attributes": ["smell"]}, current)
    assert "max_regions" in validate({"task": "attribute", "attributes": ["color"], "max_regions": 0}, current)
    # emptying the list while asking for attributes is refused however it is split
    attribute = {**current, "task": "attribute", "attributes": ["color"]}
    assert "non-empty" in validate({"attributes": []}, attribute)
    assert validate({"task": "dense", "attributes": []}, attribute) is None
    # a model's own attribute names replace the built-in ones
    assert validate({"attributes": ["material"]}, current, known_attributes=("material",)) is None
    assert "unknown attribute" in validate({"attributes": ["color"]}, current, known_attributes=("material",))


def test_an_empty_attributes_list_from_the_command_line_is_named():
    # rcl gives `-p attributes:=[]` no type; rclpy passes its value as None
    reason = validate({"attributes": None}, {"task": "dense"})
    assert "attributes has no value" in reason and "-p attributes:=[color]" in reason
    assert "NoneType" not in reason


@pytest.mark.parametrize("name,value,text", [
    ("max_regions", "16", "max_regions must be of type int"),
    ("max_regions", True, "max_regions must be of type int"),
    ("sync_slop", "0.1", "sync_slop must be of type float"),
    ("attributes", "color", "attributes must be a list of strings"),
    ("attributes", ["color", 3], "attributes must be a list of strings"),
    ("publish_annotated", 1, "publish_annotated must be of type bool"),
    ("task", None, "task has no value"),
])
def test_parameter_values_of_the_wrong_type_are_refused(name, value, text):
    assert text in validate({name: value}, {s.name: s.default for s in NODE_PARAMS})


def test_echoed_values_are_bounded():
    current = {s.name: s.default for s in NODE_PARAMS}
    reason = validate({"task": "x" * 10_000}, current)
    assert reason.startswith("task must be one of") and len(reason) < 200 and "(10000 characters)" in reason
    assert len(validate({"attributes": ["y" * 10_000] * 50}, current)) < 600
    assert echo("short") == "'short'"
    assert len(echo("z" * 10_000)) == ECHO_LIMIT and echo("z" * 10_000).endswith("... (10000 characters)")
    assert len(echo("z" * 10_000, 200)) == 200


# ---------------------------------------------------------------------------------------------------- sources
def test_synthetic_source_and_upscale():
    from finecaption_ros.data.scenes import SceneGenerator

    frames = open_source("synthetic", scale=2, scenes=SceneGenerator(seed=3))
    frame = next(frames)
    assert frame.image.shape == (512, 512, 3) and frame.labels.shape == (512, 512)
    ids = {int(i) for i in np.unique(frame.labels) if i}
    assert ids == {i for i, _ in frame.truth}
    np.testing.assert_array_equal(upscale(np.array([[1, 2]]), 2), [[1, 1, 2, 2], [1, 1, 2, 2]])


def test_image_folder_source(tmp_path):
    from PIL import Image

    Image.fromarray(RGB).save(tmp_path / "a.png")
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.ones((6, 5), np.uint8)).save(tmp_path / "masks" / "a.png")
    frame = next(open_source(str(tmp_path), mask_dir=str(tmp_path / "masks")))
    np.testing.assert_array_equal(frame.image, RGB)
    assert frame.labels.sum() == 30


def test_video_source_without_opencv_names_the_package(tmp_path, monkeypatch):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)
    with pytest.raises(SourceError, match="pip install opencv-python-headless"):
        next(open_source(str(video)))


def test_unknown_source_is_a_clear_error():
    with pytest.raises(SourceError, match="neither"):
        open_source("/no/such/thing")


def test_pipeline_batches_frames_of_several_cameras_in_one_captioner_call():
    fake = FakeCaptioner()
    pipe = CaptionPipeline(fake, PipelineConfig(caption_reuse=False))
    image = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    other = np.zeros((40, 40), np.int32)
    other[5:25, 5:25] = 3
    out = pipe.process_batch([(image, scene_labels()), (image[:, ::-1].copy(), other)])
    assert fake.batches == [2]  # one call for both frames
    assert [c["context"] for c in fake.calls] == [[5, 9], [3]]  # each frame's neighbours are its own regions
    assert [[c.region_id for c in r.captions] for r in out] == [[5, 9], [3]]
    # A frame the captioner refuses fails alone: the batch is retried frame by frame.
    bad = np.full((40, 40), 7, np.int32)
    fake.caption = _refusing(fake.caption, bad)
    out = pipe.process_batch([(image, scene_labels()), (image, bad)])
    assert isinstance(out[1], FrameError) and out[1].reason == "captioner_error"
    assert [c.region_id for c in out[0].captions] == [5, 9]


def test_pipeline_keeps_the_reuse_of_each_camera_apart():
    pipe = CaptionPipeline(FakeCaptioner(), PipelineConfig(min_region_area=16))
    front, left = (RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(2))
    frames = [(front, scene_labels()), (left, scene_labels())]  # the same region ids, other pixels
    pipe.process_batch(frames, sources=["front", "left"], now_s=0)
    again = pipe.process_batch(frames, sources=["front", "left"], now_s=1)
    assert [[c.reused for c in r.captions] for r in again] == [[True, True], [True, True]]


def _refusing(caption, bad_labels):
    def wrapped(image, masks, *args, **kwargs):
        if masks is not None and np.array_equal(masks, bad_labels):
            raise ValueError("this label map is refused")
        return caption(image, masks, *args, **kwargs)
    return wrapped


# ---------------------------------------------------------------------------------------------------- layers
def test_ros_support_never_reaches_up_or_into_the_training_data():
    """ros_support sits below the rclpy layer (ros/) and beside, not on top of, the training-data code (data/)."""
    import ast
    from pathlib import Path

    import finecaption_ros.ros_support as package

    for path in Path(package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("rclpy", "..data", "..ros", "finecaption_ros.data",
                                            "finecaption_ros.ros.")), f"{path.name} imports {name}"
