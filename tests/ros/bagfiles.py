"""Small rosbag2 recordings for the bag tests, written with rosbags: generated scenes as rgb8 frames + mono8
instance masks with identical header stamps (a camera + segmenter recording)."""
from __future__ import annotations

from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer

from finecaption_ros.data.scenes import SceneGenerator
from finecaption_ros.ros_support.bags import IMAGE_TYPE, image_message, typestore
from finecaption_ros.ros_support.image_codec import encode

IMAGE_TOPIC = "/camera/image_raw"
MASK_TOPIC = "/segmenter/instances"
T0_NS = 1_700_000_000_000_000_000


def scenes(n: int, seed: int = 5, size: int = 256):
    generator = SceneGenerator(height=size, width=size, seed=seed, split="eval")
    return [generator.sample() for _ in range(n)]


def write_bag(path: Path, frames, storage: str = "sqlite3", period_s: float = 0.4, mask_offsets_ns=None,
              skip_masks=(), extra=None, image_encoding: str = "rgb8") -> list[int]:
    """frames: scenes (image + labels). Image i is stamped T0 + i * period and recorded 1 ms later; its mask has
    the same stamp (plus mask_offsets_ns[i]) and is recorded 2 ms later. `extra`: (topic, msgtype, message) to
    add once. Returns the image stamps."""
    store = typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    stamps = []
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        image_conn = writer.add_connection(IMAGE_TOPIC, IMAGE_TYPE, typestore=store)
        mask_conn = writer.add_connection(MASK_TOPIC, IMAGE_TYPE, typestore=store)
        for i, scene in enumerate(frames):
            stamp = T0_NS + int(round(i * period_s * 1e9))
            stamps.append(stamp)
            image = image_message(encode(scene.image, image_encoding), stamp_ns=stamp, frame_id="camera")
            writer.write(image_conn, stamp + 1_000_000, store.serialize_cdr(image, IMAGE_TYPE))
            if i in skip_masks:
                continue
            offset = mask_offsets_ns[i] if mask_offsets_ns else 0
            mask = image_message(encode(scene.labels, "mono8"), stamp_ns=stamp + offset, frame_id="camera")
            writer.write(mask_conn, stamp + 2_000_000, store.serialize_cdr(mask, IMAGE_TYPE))
        if extra:
            topic, msgtype, message = extra
            conn = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conn, T0_NS, store.serialize_cdr(message, msgtype))
    return stamps


def storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
