"""The captioner in a child process of its own, fed through shared memory (no rclpy, no torch in the parent).

Why: torch runs hundreds of small ops per caption and takes the GIL back after each one. In the node's process the
executor thread (image and mask callbacks, pairing, parameter calls) holds the GIL in turns with it, and inference
slows by the node's receiving (measured in bench/README.md, "node_rate"). A child process has its own GIL; the
parent's worker thread only waits on a socket, which releases it.

`CaptionerProcess` has the captioner's API the node uses (`caption`, `caption_frames`, `model_id`, `backend`,
`supported_attributes`). One channel per inference worker: a socket pair and a shared-memory segment that holds the
frames of one call (grown when a call needs more); the child runs one thread per channel on one model. The child
ignores SIGINT (the parent stops it: Ctrl-C reaches the whole process group) and exits when its parent does (end of
file on its sockets). A child that dies is restarted at the next call; the call that saw it die fails.
"""
from __future__ import annotations

import mmap
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from .startup import StartupError
from .stats import rss_mb

READY_TIMEOUT_S = 600.0  # loading a big model from a slow disk; a child that fails says so at once
_ALIGN = 64
_GROW = 4 << 20  # segments grow in steps of this


def _shm_room() -> int:
    """Bytes free in /dev/shm (where POSIX shared memory lives on Linux, and where the child maps it from); 0 without
    one (every frame then goes through the socket)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class CaptionerProcessError(RuntimeError):
    """The child process is gone (killed, out of memory); the next call starts a new one."""


class CaptionerProcess:
    def __init__(self, model_path: str = "", backend: str = "torch", engine_dir: str = "", num_threads: int = 0,
                 workers: int = 1, **engine_options):
        self._load = {"model_path": model_path, "backend": backend, "engine_dir": engine_dir,
                      "num_threads": num_threads, **engine_options}
        self.workers = workers
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._generation = 0
        self._start()

    # ---- the captioner's API ------------------------------------------------------------------------------------
    def caption(self, image, masks=None, task: str = "dense", attributes=None, max_new_tokens=None,
                region_ids=None):
        return self.caption_frames([(image, masks, region_ids)], task, attributes, max_new_tokens)[0]

    def caption_frames(self, frames, task: str = "dense", attributes=None, max_new_tokens=None):
        return self.submit(frames, task, attributes, max_new_tokens).result()

    def submit(self, frames, task: str = "dense", attributes=None, max_new_tokens=None) -> Call:
        """Hand the child a call and return at once; `.result()` (exactly once) waits for its captions. A worker
        holds its channel from here to `result`."""
        generation, free = self._generation, self._free
        channel = free.get()
        try:
            if channel.conn.closed:  # taken from a child that has gone since
                raise CaptionerProcessError("the captioner process stopped; it is restarted for the next frame")
            segment, layout = channel.write(frames)
            try:
                channel.conn.send(("caption", segment, layout, task, list(attributes) if attributes else None,
                                   max_new_tokens))
            except (EOFError, OSError) as err:
                raise CaptionerProcessError(f"the captioner process stopped ({self._died(generation)}); "
                                            "it is restarted for the next frame") from err
        except BaseException:
            free.put(channel)
            raise
        return Call(self, channel, generation, free)

    # ---- the child's life -----------------------------------------------------------------------------------------
    def rss_mb(self) -> float:
        """Resident memory of the child (the model's), 0 when it is not running."""
        return rss_mb(self._proc.pid) if self._proc is not None else 0.0

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _start(self) -> None:
        pairs = [socket.socketpair() for _ in range(self.workers)]
        command = [sys.executable, "-c", "from finecaption_ros.ros_support.captioner_process import _serve; _serve()",
                   ",".join(str(child.fileno()) for _, child in pairs)]
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(  # the child runs this very copy of the package
            p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p))
        self._proc = subprocess.Popen(command, pass_fds=[child.fileno() for _, child in pairs],
                                      stdin=subprocess.DEVNULL, env=env)
        channels = [_Channel(Connection(parent.detach())) for parent, _ in pairs]
        for _, child in pairs:
            child.close()
        first = channels[0].conn
        first.send(self._load)
        try:
            if not first.poll(READY_TIMEOUT_S):
                raise StartupError(f"the captioner process did not load the model in {READY_TIMEOUT_S:g} s")
            kind, value = first.recv()
        except (EOFError, OSError):
            kind, value = "error", f"the captioner process exited while loading the model ({self._exit_text()})"
        if kind != "ready":
            for channel in channels:
                channel.close()
            self._proc.kill()
            self._proc.wait()
            raise StartupError(value)
        self.model_id, self.backend, self.supported_attributes = value
        self._channels = channels
        self._free: queue.Queue = queue.Queue()
        for channel in channels:
            self._free.put(channel)

    def _died(self, generation: int) -> str:
        """A channel saw the child go: the first worker to see it starts a new one (the others find it done); how
        the old one ended."""
        with self._lock:
            if generation != self._generation:
                return "restarted by another worker"
            self._stop()
            how = self._exit_text()
            self._generation += 1
            try:
                self._start()
            except StartupError as err:  # the next call fails again and retries
                how += f"; the restart failed: {err}"
            return how

    def _stop(self) -> None:
        for channel in getattr(self, "_channels", []):
            channel.close()
        self._channels = []
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5.0)  # end of file on every socket: the child exits by itself
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _exit_text(self) -> str:
        code = self._proc.poll() if self._proc is not None else None
        if code is None:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Call:
    """A call the child is working on (`CaptionerProcess.submit`)."""

    def __init__(self, owner: CaptionerProcess, channel: _Channel, generation: int, free: queue.Queue):
        self._owner, self._channel, self._generation, self._free = owner, channel, generation, free

    def result(self) -> list:
        try:
            kind, value = self._channel.conn.recv()
        except (EOFError, OSError) as err:
            raise CaptionerProcessError(f"the captioner process stopped ({self._owner._died(self._generation)}); "
                                        "it is restarted for the next frame") from err
        finally:
            self._free.put(self._channel)
        if kind == "ok":
            return value
        if kind == "input":
            raise ValueError(value)  # the captioner's CaptionerInputError (a ValueError), as the pipeline expects
        raise RuntimeError(value)


class _Channel:
    """One worker's socket to the child and the shared memory its frames travel in."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.shm: SharedMemory | None = None

    def write(self, frames) -> tuple[str | None, list]:
        """Copy every array of `frames` into the segment: (its name, each array's (offset, shape, dtype) and the
        region ids as they are). Frames too large for the room left in /dev/shm (64 MiB in a default Docker
        container; writing past it would kill this process with SIGBUS) go pickled through the socket instead:
        (None, the values)."""
        arrays, layout, size = [], [], 0
        for image, masks, region_ids in frames:
            entry = []
            for value in (image, masks):
                if isinstance(value, np.ndarray):
                    arrays.append((size, value))
                    entry.append(("shared", size, value.shape, value.dtype.str))
                    size = -(-(size + value.nbytes) // _ALIGN) * _ALIGN
                else:  # None, or a list of masks (the library's other form): pickled with the call
                    entry.append(("value", value))
            layout.append((*entry, region_ids))
        if self.shm is None or self.shm.size < size:
            self._release()
            room, grown = _shm_room(), -(-max(size, 1) // _GROW) * _GROW
            try:
                if size > room:
                    raise OSError("no room in /dev/shm")
                self.shm = SharedMemory(create=True, size=grown if grown <= room else size)
            except OSError:
                return None, [(("value", image), ("value", masks), region_ids) for image, masks, region_ids in frames]
        for offset, value in arrays:
            np.ndarray(value.shape, value.dtype, self.shm.buf, offset)[...] = value
        return self.shm.name, layout

    def close(self) -> None:
        self.conn.close()
        self._release()

    def _release(self) -> None:
        if self.shm is not None:
            self.shm.close()
            self.shm.unlink()
            self.shm = None


def _read(buf, entry):
    if entry[0] == "shared":
        _, offset, shape, dtype = entry
        return np.ndarray(shape, np.dtype(dtype), buf, offset)
    return entry[1]


def _serve() -> None:
    """The child: load the captioner once, then answer each channel on its own thread until the parent goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conns = [Connection(int(fd)) for fd in sys.argv[1].split(",")]
    load = conns[0].recv()
    try:
        from .startup import load_captioner, warm_up

        options = {k: v for k, v in load.items() if k not in ("model_path", "backend", "engine_dir", "num_threads")}
        captioner = load_captioner(load["model_path"], load["backend"], load["engine_dir"], load["num_threads"],
                                   **options)
        warm_up(captioner)
    except StartupError as err:
        conns[0].send(("error", str(err)))
        return
    conns[0].send(("ready", (captioner.model_id, captioner.backend, tuple(captioner.supported_attributes))))
    threads = [threading.Thread(target=_answer, args=(captioner, conn), daemon=True) for conn in conns[1:]]
    for thread in threads:
        thread.start()
    _answer(captioner, conns[0])  # the first channel on the main thread (the only one with one worker)
    for thread in threads:
        thread.join()


def _answer(captioner, conn: Connection) -> None:
    segments: dict[str, mmap.mmap] = {}
    while True:
        try:
            _, name, layout, task, attributes, max_new_tokens = conn.recv()
        except (EOFError, OSError):
            break
        if name is not None and name not in segments:
            _close_all(segments)
            segments = {name: _attach(name)}
        buf = segments.get(name)
        frames = [(_read(buf, image), _read(buf, masks), region_ids) for image, masks, region_ids in layout]
        try:
            reply = ("ok", captioner.caption_frames(frames, task=task, attributes=attributes,
                                                    max_new_tokens=max_new_tokens))
        except ValueError as err:
            reply = ("input", str(err))
        except Exception as err:
            reply = ("error", f"{type(err).__name__}: {err}")
        del frames  # views into the segment: released before it may close
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError) as err:
            conn.send(("error", f"cannot return the captions: {err}"))
        except (EOFError, OSError):
            break
    _close_all(segments)


def _close_all(segments: dict) -> None:
    for shm in segments.values():
        try:
            shm.close()
        except BufferError:  # a view into it still referenced (an exception's frame): unmapped at exit instead
            pass


def _attach(name: str) -> mmap.mmap:
    # The parent's segment, mapped as the file POSIX shared memory is on Linux: SharedMemory(name=...) would start a
    # resource tracker in this process too (Python < 3.13), which unlinks the parent's segment when the child exits.
    fd = os.open(f"/dev/shm/{name.lstrip('/')}", os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)
