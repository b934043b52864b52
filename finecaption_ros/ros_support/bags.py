"""rosbag2 recordings (sqlite3 or MCAP) without a ROS graph: read a bag's image and mask topics, caption every pair
offline, write the captions as a new bag and as JSON lines; and read a bag's messages in order for replay.

Uses the `rosbags` library (pure Python) for the bag formats and CDR, so it needs neither rclpy nor rosbag2. The
captioner comes in as an object, so this module imports no torch. Offline and live share their rules: images and
masks pair through the node's StampPairer, are checked and decoded by image_codec through the node's
CaptionPipeline, and the captions are the node's RegionCaptionArray, whose definition is read from the package's own
msg/*.msg files.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from .errors import FrameError
from .image_codec import check_image, check_mask, encode
from .pairing import IMAGE, MASK, StampPairer
from .pipeline import CaptionPipeline, PipelineConfig

IMAGE_TYPE = "sensor_msgs/msg/Image"
CAPTION_TYPE = "finecaption_ros/msg/RegionCaption"
CAPTIONS_TYPE = "finecaption_ros/msg/RegionCaptionArray"
CAPTIONS_TOPIC = "/region_captions"
ANNOTATED_TOPIC = "/finecaption_node/annotated_image"  # where the node publishes it (~/annotated_image)
JSONL_NAME = "captions.jsonl"
STORAGES = ("sqlite3", "mcap")
PACKAGE = "finecaption_ros"


class BagError(ValueError):
    """A bag that cannot be read or written as asked (missing, truncated or corrupt, no such topic, wrong type).
    `str(err)` is one line naming the problem and the fix."""


# ------------------------------------------------------------------------------------------------------- types
def msg_dir() -> Path:
    """The package's own msg/ folder: the source checkout's, else the one an install put in share/finecaption_ros."""
    candidates = [Path(__file__).resolve().parents[2] / "msg"]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    candidates += [Path(p) / "share" / PACKAGE / "msg" for p in prefixes]
    for folder in candidates:
        if (folder / "RegionCaptionArray.msg").is_file():
            return folder
    raise BagError(f"cannot find {PACKAGE}'s msg/RegionCaptionArray.msg (looked in "
                   f"{', '.join(str(c) for c in candidates)}); run from a source checkout or install the package")


def _rosbags():
    try:
        import rosbags
    except ImportError as err:
        raise BagError("reading and writing bags needs the rosbags library: pip install rosbags==0.11.9 (it is in "
                       "requirements.txt)") from err
    return rosbags


@lru_cache(maxsize=1)
def typestore():
    """ROS 2 Kilted's standard types plus our messages, parsed from msg/*.msg."""
    _rosbags()
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in sorted(msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


# ------------------------------------------------------------------------------------------------------- reading
def storage_of(path: str | Path) -> str:
    """'sqlite3' or 'mcap' for a bag folder (its metadata.yaml) or a single .db3 / .mcap file."""
    path = Path(path)
    if path.is_file():
        return "mcap" if path.suffix == ".mcap" else "sqlite3"
    meta = path / "metadata.yaml"
    text = meta.read_text(errors="replace") if meta.is_file() else ""
    return "mcap" if "storage_identifier: mcap" in text else "sqlite3"


def _bag_problem(path, err: Exception) -> BagError:
    what = str(err).strip() or type(err).__name__
    return BagError(f"cannot read bag {path}: it is truncated or corrupt ({what}); copy or record it again (a cut "
                    ".mcap file can often be saved with `mcap recover`)")


@contextmanager
def open_bag(path: str | Path):
    """An open rosbags AnyReader; every failure to open or read it becomes one BagError."""
    _rosbags()
    from rosbags.highlevel import AnyReader

    path = Path(path).expanduser()
    if not path.exists():
        raise BagError(f"bag {path} does not exist; give a rosbag2 folder (with metadata.yaml) or a .db3 / .mcap file")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError(f"bag {path} is a folder without metadata.yaml; give the rosbag2 folder itself or its "
                       ".db3 / .mcap file")
    if path.is_file() and path.suffix not in (".db3", ".mcap"):
        raise BagError(f"bag {path} is neither a rosbag2 folder nor a .db3 / .mcap file")
    try:
        reader = AnyReader([path], default_typestore=typestore())
        reader.open()
    except BagError:
        raise
    except Exception as err:  # rosbags' reader errors, sqlite3 / apsw errors, struct errors of a cut MCAP file
        raise _bag_problem(path, err) from err
    try:
        yield reader
    except BagError:
        raise
    except (ArithmeticError, LookupError, OSError, ValueError, EOFError, sqlite3.Error) as err:
        raise _bag_problem(path, err) from err
    except Exception as err:
        if type(err).__module__.split(".")[0] in ("rosbags", "apsw", "zstd", "lz4", "backports"):
            raise _bag_problem(path, err) from err
        raise
    finally:
        try:
            reader.close()
        except Exception:  # a reader that failed mid-read may not close cleanly; the first error is the one
            pass


def topic_types(reader) -> dict[str, str]:
    return {c.topic: c.msgtype for c in reader.connections}


def _connections(reader, path, topic: str, want_type: str, flag: str):
    types = topic_types(reader)
    if topic not in types:
        listed = ", ".join(f"{t} ({m})" for t, m in sorted(types.items())) or "none"
        raise BagError(f"bag {path} has no topic {topic!r}; its topics: {listed}; choose one with {flag}")
    if types[topic] != want_type:
        raise BagError(f"topic {topic!r} in bag {path} is {types[topic]}, not {want_type}; choose a {want_type} "
                       f"topic with {flag}")
    return [c for c in reader.connections if c.topic == topic]


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    log_time_ns: int  # when the recorder received it
    raw: bytes  # CDR, as recorded


def read_messages(path: str | Path, topics: list[str] | None = None) -> Iterator[BagMessage]:
    """Every message of `topics` (default: all) in recorded order, as recorded (CDR bytes)."""
    with open_bag(path) as reader:
        types = topic_types(reader)
        for topic in topics or ():
            if topic not in types:
                listed = ", ".join(sorted(types)) or "none"
                raise BagError(f"bag {path} has no topic {topic!r}; its topics: {listed}")
        connections = [c for c in reader.connections if not topics or c.topic in topics]
        for connection, log_time, raw in reader.messages(connections=connections):
            yield BagMessage(connection.topic, connection.msgtype, int(log_time), bytes(raw))


def check_topics(path: str | Path, image_topic: str, mask_topic: str) -> None:
    """Raise BagError unless the bag opens and has both topics as sensor_msgs/msg/Image (before a model loads)."""
    with open_bag(path) as reader:
        _connections(reader, path, image_topic, IMAGE_TYPE, "--image-topic")
        _connections(reader, path, mask_topic, IMAGE_TYPE, "--mask-topic")


def bag_topics(path: str | Path) -> dict[str, str]:
    """topic -> message type of a bag."""
    with open_bag(path) as reader:
        return topic_types(reader)


@dataclass
class Pair:
    image: object  # deserialised sensor_msgs/msg/Image (rosbags dataclass: the fields image_codec reads)
    mask: object
    stamp_ns: int  # the image's header stamp
    log_time_ns: int  # when the pair could first form: the later message's recorded time


@dataclass
class ReadStats:
    images: int = 0
    masks: int = 0
    pairs: int = 0
    rejected: Counter = field(default_factory=Counter)  # FrameError reason -> count (header checks)
    dropped: Counter = field(default_factory=Counter)  # "unmatched_images:timeout" ... -> count
    first_problem: dict[str, str] = field(default_factory=dict)  # counter -> its first log line


def read_pairs(reader, path, image_topic: str, mask_topic: str, pairer: StampPairer, stats: ReadStats,
               on_message: Callable | None = None, max_pixels: int = 0) -> Iterator[Pair]:
    """Deserialise the two topics in recorded order and pair them as the node does (its StampPairer, with the
    recorded receive times as the clock). `on_message(connection, log_time, raw)` sees every message read."""
    image_conns = _connections(reader, path, image_topic, IMAGE_TYPE, "--image-topic")
    mask_conns = _connections(reader, path, mask_topic, IMAGE_TYPE, "--mask-topic")
    kinds = {c.id: IMAGE for c in image_conns} | {c.id: MASK for c in mask_conns}
    for connection, log_time, raw in reader.messages(connections=image_conns + mask_conns):
        if on_message is not None:
            on_message(connection, log_time, raw)
        kind = kinds[connection.id]
        msg = reader.deserialize(raw, IMAGE_TYPE)
        if kind == IMAGE:
            stats.images += 1
        else:
            stats.masks += 1
        try:
            (check_image if kind == IMAGE else check_mask)(msg, max_pixels)
        except FrameError as err:
            _note(stats.rejected, stats, err.reason, f"{kind} rejected ({err.reason}): {err}")
            continue
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        result = pairer.add(kind, stamp, msg, int(log_time))
        for item in result.dropped:
            counter = "unmatched_images" if item.kind == IMAGE else "unmatched_masks"
            _note(stats.dropped, stats, counter, f"{item.kind} stamped {item.stamp_ns / 1e9:.6f} never paired "
                                                 f"({item.why})")
        if result.pair is not None:
            stats.pairs += 1
            yield Pair(result.pair[0], result.pair[1], result.stamp_ns, int(log_time))
    for item in pairer.expire(2**63 - 1):  # whatever still waits at the end of the bag never paired
        counter = "unmatched_images" if item.kind == IMAGE else "unmatched_masks"
        _note(stats.dropped, stats, counter, f"{item.kind} stamped {item.stamp_ns / 1e9:.6f} never paired "
                                             "(end of bag)")


def _note(counts: Counter, stats: ReadStats, key: str, line: str) -> None:
    counts[key] += 1
    stats.first_problem.setdefault(key, line)


# ------------------------------------------------------------------------------------------------------- offline
@dataclass
class BagCaptionSummary:
    out: Path
    jsonl: Path
    storage: str
    frames: int  # pairs captioned (a message on /region_captions each)
    regions: int
    seconds: float  # wall time of the whole pass (read, decode, caption, write)
    inference_seconds: float
    read: ReadStats
    problems: Counter = field(default_factory=Counter)  # pipeline problems (empty masks, ...) and rejected frames

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [f"captioned {self.frames} frame(s) ({self.regions} captions) in {self.seconds:.1f} s = "
               f"{self.frames_per_second:.1f} frames/s ({self.inference_seconds:.1f} s in the model)",
               f"wrote {self.out} ({self.storage}: the input topics + {CAPTIONS_TOPIC}) and {self.jsonl}"]
        r = self.read
        if r.images != r.pairs or r.masks != r.pairs:
            out.append(f"{r.images} image(s) and {r.masks} mask(s) read, {r.pairs} pair(s) formed")
        for key, n in sorted((r.rejected + r.dropped + self.problems).items()):
            out.append(f"  {key}: {n} (first: {r.first_problem.get(key, '')})")
        return out


def caption_message(result, header, model_id: str, backend: str):
    """A FrameResult -> RegionCaptionArray (rosbags dataclass) with `header` copied, as the node fills it."""
    store = typestore()
    caption_cls = store.types[CAPTION_TYPE]
    roi_cls = store.types["sensor_msgs/msg/RegionOfInterest"]
    array_cls = store.types[CAPTIONS_TYPE]
    captions = [caption_cls(region_id=int(c.region_id), task=c.task, attribute=c.attribute, caption=c.caption,
                            confidence=float(c.confidence),
                            bbox=roi_cls(x_offset=int(c.bbox[0]), y_offset=int(c.bbox[1]), height=int(c.bbox[3]),
                                         width=int(c.bbox[2]), do_rectify=False),
                            mask_area=int(c.mask_area), reused=bool(c.reused))
                for c in result.captions]
    return array_cls(header=header, captions=captions, model_id=model_id, backend=backend,
                     processing_latency=float(result.decode_s + result.select_s + result.inference_s),
                     inference_time=float(result.inference_s))


def _json_record(pair: Pair, result, model_id: str, backend: str) -> dict:
    header = pair.image.header
    return {"stamp": {"sec": int(header.stamp.sec), "nanosec": int(header.stamp.nanosec)},
            "stamp_ns": pair.stamp_ns, "frame_id": header.frame_id, "log_time_ns": pair.log_time_ns,
            "model_id": model_id, "backend": backend, "inference_time": result.inference_s,
            "captions": [{**asdict(c), "bbox": list(c.bbox)} for c in result.captions]}


def caption_bag(bag: str | Path, out: str | Path, captioner, image_topic: str, mask_topic: str,
                task: str = "dense", attributes: list[str] | None = None, storage: str | None = None,
                annotated: bool = False, sync_slop: float = 0.0, sync_timeout: float = 2.0,
                sync_queue_size: int = 8, config: PipelineConfig | None = None,
                progress: bool = False) -> BagCaptionSummary:
    """Caption every image + mask pair of a bag with the node's rules, writing to the new bag folder `out`:
    the image and mask topics as recorded, RegionCaptionArray on /region_captions (header copied from the image,
    recorded at the time the pair formed), optionally the annotated image, and out/captions.jsonl (one JSON object
    per captioned frame). Frames the node would reject are counted and skipped, as the node does.
    `storage`: 'sqlite3' or 'mcap'; default: the input bag's. Reuse is off: every pair is captioned afresh."""
    import time

    from rosbags.rosbag2 import StoragePlugin, Writer

    bag, out = Path(bag).expanduser(), Path(out).expanduser()
    if storage is not None and storage not in STORAGES:
        raise BagError(f"output storage {storage!r} is not one of {', '.join(STORAGES)}")
    if out.exists():
        raise BagError(f"output {out} exists already; choose a new folder for --out (rosbag2 never overwrites)")
    if image_topic == mask_topic:
        raise BagError(f"--image-topic and --mask-topic are both {image_topic}; the masks need their own topic")
    if not 0.0 <= sync_slop <= 10.0:
        raise BagError(f"sync slop {sync_slop} s is outside [0, 10] s (the node's sync_slop range)")
    config = replace(config or PipelineConfig(), task=task, caption_reuse=False,
                     attributes=tuple(attributes) if attributes else (config or PipelineConfig()).attributes)
    pipeline = CaptionPipeline(captioner, config)
    model_id = str(getattr(captioner, "model_id", "unknown"))
    backend = str(getattr(captioner, "backend", "unknown"))
    store = typestore()
    stats = ReadStats()
    problems: Counter = Counter()
    frames = regions = 0
    inference_s = 0.0
    t0 = time.perf_counter()
    with open_bag(bag) as reader:
        storage = storage or storage_of(bag)
        pairer = StampPairer(int(sync_slop * 1e9), int(sync_timeout * 1e9), sync_queue_size)
        # Validate the topics before anything is written.
        _connections(reader, bag, image_topic, IMAGE_TYPE, "--image-topic")
        _connections(reader, bag, mask_topic, IMAGE_TYPE, "--mask-topic")
        counts = {c.topic: 0 for c in reader.connections}
        for c in reader.connections:
            counts[c.topic] += c.msgcount
        total = min(counts[image_topic], counts[mask_topic])
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(out, version=9, storage_plugin=plugin)
        try:
            writer.open()
        except Exception as err:
            raise BagError(f"cannot create the output bag {out}: {err}") from err
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="captioning", unit="frame", file=sys.stderr)
        jsonl = out / JSONL_NAME
        try:
            copies = {}

            def copy(connection, log_time, raw):
                if connection.id not in copies:
                    qos = getattr(connection.ext, "offered_qos_profiles", ())
                    copies[connection.id] = writer.add_connection(connection.topic, connection.msgtype,
                                                                  typestore=reader.typestore,
                                                                  offered_qos_profiles=qos)
                writer.write(copies[connection.id], log_time, raw)

            captions_conn = writer.add_connection(CAPTIONS_TOPIC, CAPTIONS_TYPE, typestore=store)
            annotated_conn = writer.add_connection(ANNOTATED_TOPIC, IMAGE_TYPE, typestore=store) if annotated \
                else None
            with open(jsonl, "w") as lines:
                for pair in read_pairs(reader, bag, image_topic, mask_topic, pairer, stats, copy,
                                       config.max_image_pixels):
                    try:
                        result = pipeline.process_messages(pair.image, pair.mask)
                    except FrameError as err:
                        problems[err.reason] += 1
                        stats.first_problem.setdefault(err.reason, f"frame rejected ({err.reason}): {err}")
                        continue
                    for counter, line, n in result.problems:
                        problems[counter] += n
                        stats.first_problem.setdefault(counter, line)
                    msg = caption_message(result, pair.image.header, model_id, backend)
                    writer.write(captions_conn, pair.log_time_ns, store.serialize_cdr(msg, CAPTIONS_TYPE))
                    if annotated_conn is not None:
                        writer.write(annotated_conn, pair.log_time_ns,
                                     store.serialize_cdr(_annotated(result, pair.image.header), IMAGE_TYPE))
                    lines.write(json.dumps(_json_record(pair, result, model_id, backend)) + "\n")
                    frames += 1
                    regions += len(result.captions)
                    inference_s += result.inference_s
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            writer.close()
    return BagCaptionSummary(out, jsonl, storage, frames, regions, time.perf_counter() - t0, inference_s, stats,
                             problems)


def image_message(fields: dict, header=None, stamp_ns: int = 0, frame_id: str = ""):
    """image_codec.encode() fields -> a sensor_msgs/msg/Image for writing to a bag; `header`, or one made of
    stamp_ns + frame_id."""
    import numpy as np

    store = typestore()
    if header is None:
        time_cls = store.types["builtin_interfaces/msg/Time"]
        header = store.types["std_msgs/msg/Header"](stamp=time_cls(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                                                    frame_id=frame_id)
    return store.types[IMAGE_TYPE](header=header, height=fields["height"], width=fields["width"],
                                   encoding=fields["encoding"], is_bigendian=fields["is_bigendian"],
                                   step=fields["step"], data=np.frombuffer(fields["data"], dtype=np.uint8))


def _annotated(result, header):
    from .annotate import annotate

    return image_message(encode(annotate(result.image, result.labels, result.captions), "rgb8"), header)


def read_captions(path: str | Path, topic: str = CAPTIONS_TOPIC) -> list:
    """The RegionCaptionArray messages of a bag (e.g. one caption_bag wrote), deserialised, in recorded order."""
    with open_bag(path) as reader:
        connections = _connections(reader, path, topic, CAPTIONS_TYPE, "topic")
        return [reader.deserialize(raw, CAPTIONS_TYPE) for _, _, raw in reader.messages(connections=connections)]
