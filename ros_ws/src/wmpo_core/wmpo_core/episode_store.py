"""The episode store: a Zarr (v3) directory that the robot writes and the learner reads.

Layout (docs/episode_store.md has the full contract):

    <store>/zarr.json                      root group, attribute `wmpo_episode_store`
    <store>/episodes/<episode_id>/         one committed episode (a Zarr group)
        zarr.json                          attribute `wmpo_episode`: EpisodeMeta
        images/<camera>                    (T, H, W, C) uint8, one frame per chunk, sharded
        image_time/<camera>                (T,) float64, capture time of each frame (unix s)
        state, state_time                  (T, J) float32 joint values, (T,) float64
        action                             (T, A) float32 commanded action
        time                               (T,) float64 control-tick time
    <store>/.staging/<episode_id>/         episodes being written (never visible to readers)
    <store>/.writer.lock                   flock held by the single writer

Why it is safe: a new store is built in a hidden sibling directory and renamed into place, so a
store is complete or absent. An episode is written completely under `.staging/`, then moved into
`episodes/` with one atomic rename. Readers only list `episodes/`, so they never see a partial episode; a
writer killed at any moment leaves at most a staging directory, which the next writer deletes.
Metadata updates (success labels) are single-file atomic writes (zarr's LocalStore writes to a
temporary file and renames it).

No silent holes: every array's chunk count follows from its shape and chunk grid, and an episode
with any chunk file missing is refused by validation (ingest, `wmpo store verify`) and by the
reader, naming the array (zarr alone would read a missing chunk as zeros: black frames, zero
states). Arrays are written with every chunk stored, all-zero ones included.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import itertools
import json
import math
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.storage import LocalStore

from wmpo_core.durable import fsync_dir, fsync_tree
from wmpo_core.ids import ID_PATTERN, check_id, child_path, is_valid_id
from wmpo_core.robot_config import RobotConfig

STORE_ATTR = "wmpo_episode_store"
EPISODE_ATTR = "wmpo_episode"
FORMAT_VERSION = 1
EPISODES_DIR = "episodes"
STAGING_DIR = ".staging"
LOCK_FILE = ".writer.lock"

Source = Literal["teleop", "policy", "scripted"]
STRICT_READS = {"read_missing_chunks": False}
"""Array config for every read: a missing chunk raises instead of reading as the fill value."""

IMAGE_COMPRESSOR = (BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle"), Crc32cCodec())
"""Blosc and CRC32C are built into zarr: a plain `zarr.open` decodes the frames with no codec
registration. The checksum makes a flipped byte a read error instead of a silently wrong frame."""
LOWDIM_COMPRESSOR = (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec())


class StoreError(RuntimeError):
    """Base class: anything wrong with a store, with a message that says what and where."""


class StoreFormatError(StoreError):
    """The path is not a (readable) WMPO episode store."""


class StoreLockedError(StoreError):
    """Another process is writing to this store."""


class EpisodeCorruptError(StoreError):
    """A committed episode cannot be read back."""


class EpisodeValidationError(StoreError, ValueError):
    """Data handed to the writer does not match the episode's declared layout."""


class EpisodeMeta(BaseModel):
    """Per-episode metadata, stored as the episode group's `wmpo_episode` attribute."""

    model_config = ConfigDict(extra="forbid")

    episode_id: str = Field(pattern=ID_PATTERN)
    robot_config_name: str
    robot_config_hash: str
    policy_version: str | None
    source: Source
    task: str
    success: bool | None = None
    success_labeled_by: str | None = None
    """Who decided `success`: 'env' (simulator signal), 'human', 'reward_model', ..."""
    start_time: float
    """Unix time of the first recorded step."""
    num_steps: int = Field(ge=1)
    control_rate_hz: float = Field(gt=0)
    cameras: dict[str, tuple[int, int, int]]
    state_dim: int = Field(ge=1)
    action_dim: int = Field(ge=1)
    env_seed: int | None = None
    """Seed of the simulator's initial state, when recorded in simulation."""
    extra: dict[str, Any] = {}

    @property
    def start_time_iso(self) -> str:
        return _dt.datetime.fromtimestamp(self.start_time, tz=_dt.UTC).isoformat()


def new_episode_id(prefix: str = "ep") -> str:
    """Globally unique and sortable by time: 'ep_20261121T113000123Z_3f9a1c2e'."""
    now = _dt.datetime.now(tz=_dt.UTC)
    return f"{prefix}_{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z_{secrets.token_hex(4)}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise StoreFormatError(f"{path}: unreadable metadata ({exc})") from None


class EpisodeReader:
    """Lazy access to one committed episode; arrays are read on demand."""

    def __init__(self, path: Path, meta: EpisodeMeta):
        self.path = path
        self.meta = meta
        self._group: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}

    @property
    def episode_id(self) -> str:
        return self.meta.episode_id

    def __len__(self) -> int:
        return self.meta.num_steps

    def _array(self, name: str) -> zarr.Array:
        arr = self._arrays.get(name)
        if arr is None:
            try:
                if self._group is None:
                    self._group = zarr.open_group(LocalStore(self.path, read_only=True), mode="r")
                arr = self._group[name]
            except Exception as exc:  # zarr raises many types; the caller needs to know which episode
                raise EpisodeCorruptError(
                    f"episode {self.episode_id}: cannot open array '{name}' ({exc})"
                ) from exc
            if not isinstance(arr, zarr.Array) or arr.shape[0] != self.meta.num_steps:
                raise EpisodeCorruptError(
                    f"episode {self.episode_id}: array '{name}' has shape {getattr(arr, 'shape', None)}, "
                    f"metadata says {self.meta.num_steps} steps"
                )
            missing = missing_chunks(self.path, name, arr)
            if missing:
                raise EpisodeCorruptError(_missing_message(self.episode_id, name, arr, missing))
            arr = arr.with_config(STRICT_READS)
            self._arrays[name] = arr
        return arr

    def _read(self, name: str, index: Any = slice(None)) -> np.ndarray:
        arr = self._array(name)
        try:
            return np.asarray(arr[index])
        except Exception as exc:
            raise EpisodeCorruptError(
                f"episode {self.episode_id}: cannot read '{name}'[{index}] ({exc})"
            ) from exc

    def frames(self, camera: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames [start, stop) of one camera, (n, H, W, C) uint8. Reads only those chunks."""
        if camera not in self.meta.cameras:
            raise KeyError(
                f"episode {self.episode_id} has no camera '{camera}' (cameras: {list(self.meta.cameras)})"
            )
        stop = self.meta.num_steps if stop is None else stop
        if not 0 <= start <= stop <= self.meta.num_steps:
            raise IndexError(
                f"episode {self.episode_id}: frames [{start}, {stop}) outside [0, {self.meta.num_steps})"
            )
        return self._read(f"images/{camera}", slice(start, stop))

    def frames_at(self, camera: str, indices: Iterable[int]) -> np.ndarray:
        """Frames at arbitrary step indices (repeats allowed), (n, H, W, C) uint8."""
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.meta.num_steps):
            raise IndexError(f"episode {self.episode_id}: frame index outside [0, {self.meta.num_steps})")
        unique, inverse = np.unique(idx, return_inverse=True)
        if unique.size and unique[-1] - unique[0] + 1 == unique.size:
            block = self.frames(camera, int(unique[0]), int(unique[-1]) + 1)
        else:
            block = (
                np.stack([self.frames(camera, int(i), int(i) + 1)[0] for i in unique])
                if unique.size
                else None
            )
        if block is None:
            h, w, c = self.meta.cameras[camera]
            return np.zeros((0, h, w, c), dtype=np.uint8)
        return block[inverse]

    def image_time(self, camera: str) -> np.ndarray:
        return self._read(f"image_time/{camera}")

    def state(self) -> np.ndarray:
        return self._read("state")

    def state_time(self) -> np.ndarray:
        return self._read("state_time")

    def action(self) -> np.ndarray:
        return self._read("action")

    def time(self) -> np.ndarray:
        return self._read("time")


class EpisodeWriter:
    """Streams one episode into `.staging/`; `commit()` publishes it atomically.

    Frames are buffered one shard at a time (`frames_per_shard`) and written as a whole shard, so
    each frame is encoded and written once; low-dimensional data is kept in memory until commit.
    """

    def __init__(self, store: EpisodeStore, meta: EpisodeMeta, frames_per_shard: int):
        self._store = store
        self.meta = meta
        self.path = store.root / STAGING_DIR / meta.episode_id
        self._frames_per_shard = frames_per_shard
        self._group = zarr.open_group(LocalStore(self.path), mode="w-")
        self._images: dict[str, zarr.Array] = {}
        self._buffers: dict[str, np.ndarray] = {}
        for cam, shape in meta.cameras.items():
            self._images[cam] = self._group.create_array(
                f"images/{cam}",
                shape=(0, *shape),
                dtype="uint8",
                chunks=(1, *shape),
                shards=(frames_per_shard, *shape),
                compressors=IMAGE_COMPRESSOR,
                dimension_names=("step", "height", "width", "channel"),
                # Every frame is data: skip zarr's per-chunk "all fill value?" scan (a third of
                # the write cost on camera frames).
                config={"write_empty_chunks": True},
            )
            self._buffers[cam] = np.empty((frames_per_shard, *shape), dtype=np.uint8)
        self._buffered = 0
        self._written = 0
        self._lowdim: dict[str, list[Any]] = {"state": [], "state_time": [], "action": [], "time": []}
        self._lowdim.update({f"image_time/{cam}": [] for cam in meta.cameras})
        self._closed = False

    @property
    def num_steps(self) -> int:
        return self._written + self._buffered

    def append(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        action: np.ndarray,
        time: float,
        image_times: Mapping[str, float] | None = None,
        state_time: float | None = None,
    ) -> None:
        """Add one control step. Times are real capture/command times in unix seconds."""
        if self._closed:
            raise StoreError(f"episode {self.meta.episode_id} is already committed or discarded")
        if set(images) != set(self.meta.cameras):
            raise EpisodeValidationError(
                f"step needs frames for cameras {sorted(self.meta.cameras)}, got {sorted(images)}"
            )
        state = np.asarray(state, dtype=np.float32).reshape(-1)
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if state.shape != (self.meta.state_dim,):
            raise EpisodeValidationError(
                f"state has {state.shape[0]} values, episode declares {self.meta.state_dim}"
            )
        if action.shape != (self.meta.action_dim,):
            raise EpisodeValidationError(
                f"action has {action.shape[0]} values, episode declares {self.meta.action_dim}"
            )
        if not (np.all(np.isfinite(state)) and np.all(np.isfinite(action)) and np.isfinite(time)):
            raise EpisodeValidationError("state, action and time must be finite")
        for cam, frame in images.items():
            expected = self.meta.cameras[cam]
            if frame.shape != expected or frame.dtype != np.uint8:
                raise EpisodeValidationError(
                    f"camera '{cam}' frame is {frame.shape} {frame.dtype}, episode declares {expected} uint8"
                )
        for cam, frame in images.items():
            self._buffers[cam][self._buffered] = frame
            self._lowdim[f"image_time/{cam}"].append(float((image_times or {}).get(cam, time)))
        self._lowdim["state"].append(state)
        self._lowdim["state_time"].append(float(time if state_time is None else state_time))
        self._lowdim["action"].append(action)
        self._lowdim["time"].append(float(time))
        self._buffered += 1
        if self._buffered == self._frames_per_shard:
            self._flush()

    def _flush(self) -> None:
        if self._buffered == 0:
            return
        start, stop = self._written, self._written + self._buffered
        for cam, arr in self._images.items():
            arr.resize((stop, *arr.shape[1:]))
            arr[start:stop] = self._buffers[cam][: self._buffered]
        self._written = stop
        self._buffered = 0

    def commit(self, success: bool | None = None, success_labeled_by: str | None = None) -> EpisodeMeta:
        """Write everything, then publish the episode with one atomic rename. Returns its metadata."""
        if self._closed:
            raise StoreError(f"episode {self.meta.episode_id} is already committed or discarded")
        if self.num_steps == 0:
            raise EpisodeValidationError(f"episode {self.meta.episode_id} has no steps; discard it instead")
        self._flush()
        for name, values in self._lowdim.items():
            data = np.asarray(values, dtype=np.float32 if name in ("state", "action") else np.float64)
            self._group.create_array(
                name,
                data=data,
                chunks=(max(1, min(len(data), 4096)), *data.shape[1:]),
                compressors=LOWDIM_COMPRESSOR,
                config={"write_empty_chunks": True},  # an all-zero chunk is data, not a hole
            )
        self.meta = self.meta.model_copy(
            update={
                "num_steps": self._written,
                "start_time": float(self._lowdim["time"][0]),
                "success": success,
                "success_labeled_by": success_labeled_by if success is not None else None,
            }
        )
        self._group.attrs[EPISODE_ATTR] = self.meta.model_dump(mode="json")
        self._closed = True
        self._store._publish(self.path, self.meta.episode_id)
        return self.meta

    def discard(self) -> None:
        """Drop this episode; nothing committed is touched."""
        if self._closed:
            return
        self._closed = True
        shutil.rmtree(self.path, ignore_errors=True)


class EpisodeStore:
    """Open with `EpisodeStore.open(path)` to read, `EpisodeStore.open(path, mode="a")` to write.

    One writer (enforced with an flock), any number of readers in any processes. Readers call
    `refresh()` to see episodes committed since they opened the store.
    """

    def __init__(self, root: Path, writable: bool, lock_fd: int | None, durable: bool):
        self.root = root
        self.writable = writable
        self.durable = durable
        self._lock_fd = lock_fd
        self._metas: dict[str, EpisodeMeta] = {}
        self._mtimes: dict[str, int] = {}
        self.corrupt: dict[str, str] = {}
        """episode id -> reason, for committed episodes whose metadata cannot be read."""
        self._active: EpisodeWriter | None = None
        self.refresh()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], mode: Literal["r", "a"] = "r", durable: bool = True
    ) -> EpisodeStore:
        """Open a store. Mode "a" creates it if needed and takes the single-writer lock.

        `durable` fsyncs every episode before publishing it, so a committed episode also
        survives a power cut, not only a killed process.
        """
        root = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if mode == "r":
            cls._check_format(root)
            return cls(root, writable=False, lock_fd=None, durable=durable)
        if root.exists() and any(root.iterdir()):
            cls._check_format(root)
        else:
            cls._create(root)
        lock_fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            holder = (root / LOCK_FILE).read_text().strip() or "unknown"
            raise StoreLockedError(f"{root}: another process is writing to this store ({holder})") from None
        os.ftruncate(lock_fd, 0)
        os.write(lock_fd, f"pid {os.getpid()}\n".encode())
        cls._recover(root)
        return cls(root, writable=True, lock_fd=lock_fd, durable=durable)

    @staticmethod
    def _create(root: Path) -> None:
        """Build a new store in a hidden sibling directory and rename it into place: a process
        killed mid-creation leaves no half store at `root` (at most a `.<name>.creating-*` sibling)."""
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.creating-", dir=root.parent))
        try:
            group = zarr.open_group(LocalStore(tmp), mode="w")
            group.attrs[STORE_ATTR] = {
                "format_version": FORMAT_VERSION,
                "created": _dt.datetime.now(_dt.UTC).isoformat(),
            }
            zarr.open_group(LocalStore(tmp / EPISODES_DIR), mode="w")
            tmp.chmod(0o755)  # mkdtemp makes it private; a store is shared with its readers
            fsync_tree(tmp)
            os.rename(tmp, root)  # replaces an empty directory at `root`; fails if anything is in it
            fsync_dir(root.parent)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (root.exists() and any(root.iterdir())):
                raise
            EpisodeStore._check_format(root)  # another process created it first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _check_format(root: Path) -> None:
        if not root.exists():
            raise StoreError(f"{root}: no episode store here (the path does not exist)")
        if not root.is_dir():
            raise StoreFormatError(f"{root}: not an episode store (it is a file, a store is a directory)")
        if (root / ".zgroup").exists() or (root / ".zarray").exists():
            raise StoreFormatError(f"{root}: a Zarr v2 store; episode stores use the Zarr v3 format")
        try:
            meta = _read_json(root / "zarr.json")
        except FileNotFoundError:
            raise StoreFormatError(
                f"{root}: not an episode store (no zarr.json; not a Zarr v3 store)"
            ) from None
        if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
            raise StoreFormatError(f"{root}: zarr.json is not a Zarr v3 group")
        marker = (meta.get("attributes") or {}).get(STORE_ATTR)
        if not isinstance(marker, dict):
            raise StoreFormatError(
                f"{root}: a Zarr group but not an episode store (no '{STORE_ATTR}' attribute)"
            )
        version = marker.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreFormatError(
                f"{root}: episode store format version {version!r}; "
                f"this version of the stack reads {FORMAT_VERSION}"
            )
        if not (root / EPISODES_DIR).is_dir():
            raise StoreFormatError(f"{root}: episode store without an '{EPISODES_DIR}/' directory")

    @staticmethod
    def _recover(root: Path) -> None:
        """Remove what a killed writer left behind: staging episodes and half-written temp files."""
        staging = root / STAGING_DIR
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        for partial in (root / EPISODES_DIR).glob("*/*.partial"):
            partial.unlink(missing_ok=True)

    def close(self) -> None:
        if self._active is not None:
            self._active.discard()
            self._active = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def refresh(self) -> list[str]:
        """Pick up episodes committed (or relabelled) since the last refresh; returns new ids."""
        new: list[str] = []
        seen: set[str] = set()
        episodes_dir = self.root / EPISODES_DIR
        with os.scandir(episodes_dir) as entries:
            for entry in entries:
                if not entry.is_dir() or not is_valid_id(entry.name):
                    continue
                seen.add(entry.name)
                meta_path = Path(entry.path) / "zarr.json"
                try:
                    mtime = meta_path.stat().st_mtime_ns
                except FileNotFoundError:
                    self.corrupt[entry.name] = "missing zarr.json"
                    continue
                if self._mtimes.get(entry.name) == mtime:
                    continue
                try:
                    meta = self._load_meta(entry.name, meta_path)
                except EpisodeCorruptError as exc:
                    self.corrupt[entry.name] = str(exc)
                    self._metas.pop(entry.name, None)
                    continue
                self.corrupt.pop(entry.name, None)
                if entry.name not in self._metas:
                    new.append(entry.name)
                self._metas[entry.name] = meta
                self._mtimes[entry.name] = mtime
        for gone in set(self._metas) - seen:
            del self._metas[gone]
            self._mtimes.pop(gone, None)
        return sorted(new, key=lambda i: (self._metas[i].start_time, i))

    @staticmethod
    def _load_meta(episode_id: str, meta_path: Path) -> EpisodeMeta:
        try:
            raw = _read_json(meta_path)
            meta = EpisodeMeta.model_validate(raw["attributes"][EPISODE_ATTR])
        except (StoreFormatError, KeyError, TypeError) as exc:
            raise EpisodeCorruptError(
                f"episode {episode_id}: metadata missing or unreadable ({exc})"
            ) from None
        except ValidationError as exc:
            raise EpisodeCorruptError(
                f"episode {episode_id}: invalid metadata: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}"
            ) from None
        if meta.episode_id != episode_id:
            raise EpisodeCorruptError(
                f"episode directory {episode_id} holds metadata of episode {meta.episode_id}"
            )
        return meta

    @property
    def episode_ids(self) -> list[str]:
        """Committed episodes, oldest first."""
        return sorted(self._metas, key=lambda i: (self._metas[i].start_time, i))

    def __len__(self) -> int:
        return len(self._metas)

    def __contains__(self, episode_id: object) -> bool:
        return episode_id in self._metas

    def __iter__(self) -> Iterator[EpisodeMeta]:
        return (self._metas[i] for i in self.episode_ids)

    def meta(self, episode_id: str) -> EpisodeMeta:
        try:
            return self._metas[episode_id]
        except KeyError:
            if episode_id in self.corrupt:
                raise EpisodeCorruptError(self.corrupt[episode_id]) from None
            raise KeyError(f"{self.root}: no episode '{episode_id}'") from None

    def episode(self, episode_id: str) -> EpisodeReader:
        return EpisodeReader(self.root / EPISODES_DIR / episode_id, self.meta(episode_id))

    def episode_path(self, episode_id: str) -> Path:
        self.meta(episode_id)
        return self.root / EPISODES_DIR / episode_id

    def select(
        self,
        source: Source | Iterable[Source] | None = None,
        success: bool | None = None,
        robot_config_name: str | None = None,
        policy_version: str | None = None,
    ) -> list[EpisodeMeta]:
        """Committed episodes matching every given criterion, oldest first."""
        sources = {source} if isinstance(source, str) else (set(source) if source is not None else None)
        return [
            m
            for m in self
            if (sources is None or m.source in sources)
            and (success is None or m.success is success)
            and (robot_config_name is None or m.robot_config_name == robot_config_name)
            and (policy_version is None or m.policy_version == policy_version)
        ]

    # ------------------------------------------------------------------ writing

    def _require_writer(self) -> None:
        if not self.writable or self._lock_fd is None:
            raise StoreError(f"{self.root}: opened read-only; open with mode='a' to write")

    def begin_episode(
        self,
        robot_config: RobotConfig,
        source: Source,
        task: str,
        policy_version: str | None = None,
        env_seed: int | None = None,
        episode_id: str | None = None,
        extra: dict[str, Any] | None = None,
        frames_per_shard: int | None = None,
    ) -> EpisodeWriter:
        """Start recording an episode laid out as `robot_config` describes."""
        self._require_writer()
        if self._active is not None and not self._active._closed:
            raise StoreError(
                f"episode {self._active.meta.episode_id} is still being recorded; commit or discard it first"
            )
        episode_id = check_id(episode_id or new_episode_id(), "episode id")
        if episode_id in self._metas or (self.root / EPISODES_DIR / episode_id).exists():
            raise StoreError(f"{self.root}: episode '{episode_id}' already exists")
        meta = EpisodeMeta(
            episode_id=episode_id,
            robot_config_name=robot_config.name,
            robot_config_hash=robot_config.content_hash,
            policy_version=policy_version,
            source=source,
            task=task,
            start_time=time.time(),
            num_steps=1,  # placeholder until commit
            control_rate_hz=robot_config.control_rate_hz,
            cameras={c.name: c.shape for c in robot_config.cameras},
            state_dim=len(robot_config.joints),
            action_dim=robot_config.action.dim,
            env_seed=env_seed,
            extra=extra or {},
        )
        # About one second of frames per shard: one file per camera-second, cheap random reads.
        fps = frames_per_shard or max(1, min(64, round(robot_config.control_rate_hz)))
        self._active = EpisodeWriter(self, meta, fps)
        return self._active

    def _publish(self, staged: Path, episode_id: str) -> None:
        if self.durable:
            fsync_tree(staged)
        target = child_path(self.root / EPISODES_DIR, episode_id, "episode id")
        os.rename(staged, target)  # atomic on POSIX: readers see all of it or nothing
        if self.durable:
            fsync_dir(self.root / EPISODES_DIR)
        self._active = None
        self.refresh()

    def set_success(self, episode_id: str, success: bool | None, labeled_by: str) -> EpisodeMeta:
        """Label (or relabel) a committed episode's success. Atomic; the frames are untouched."""
        self._require_writer()
        meta = self.meta(episode_id).model_copy(
            update={"success": success, "success_labeled_by": labeled_by if success is not None else None}
        )
        group = zarr.open_group(LocalStore(self.root / EPISODES_DIR / episode_id), mode="r+")
        group.attrs[EPISODE_ATTR] = meta.model_dump(mode="json")
        self.refresh()
        return self.meta(episode_id)

    def delete_episode(self, episode_id: str) -> None:
        """Remove a committed episode (an unreadable one too). One atomic rename takes it out of
        `episodes/` into `.staging/`, so readers see it whole or not at all; it is deleted from there,
        and a writer killed in between leaves it to the next writer's clean-up of `.staging/`."""
        self._require_writer()
        if episode_id not in self._metas and episode_id not in self.corrupt:
            self.meta(episode_id)  # raises KeyError naming the store and the id
        source = child_path(self.root / EPISODES_DIR, episode_id, "episode id")
        trash = Path(tempfile.mkdtemp(prefix="deleting-", dir=self.root / STAGING_DIR))
        os.rename(source, trash / episode_id)
        if self.durable:
            fsync_dir(self.root / EPISODES_DIR)
        shutil.rmtree(trash)
        self.corrupt.pop(episode_id, None)
        self.refresh()

    def ingest_episode_dir(self, source_dir: Path, robot_config: RobotConfig | None = None) -> EpisodeMeta:
        """Copy a committed episode directory from another store (e.g. an upload) into this one.

        The copy is validated completely (metadata, every array's shape, dtype and readability,
        and the robot config hash when given) before it is published; on any error nothing is added.
        """
        self._require_writer()
        source_dir = Path(source_dir)
        meta_path = source_dir / "zarr.json"
        if not meta_path.is_file():
            raise EpisodeValidationError(f"{source_dir}: not an episode (no zarr.json)")
        raw = _read_json(meta_path)
        try:
            meta = EpisodeMeta.model_validate(raw["attributes"][EPISODE_ATTR])
        except (KeyError, TypeError, ValidationError) as exc:
            raise EpisodeValidationError(f"{source_dir}: invalid episode metadata ({exc})") from None
        if robot_config is not None:
            expected = {
                "robot_config_hash": robot_config.content_hash,
                "cameras": {c.name: c.shape for c in robot_config.cameras},
                "state_dim": len(robot_config.joints),
                "action_dim": robot_config.action.dim,
            }
            for key, value in expected.items():
                if getattr(meta, key) != value:
                    raise EpisodeValidationError(
                        f"episode {meta.episode_id}: {key} is {getattr(meta, key)!r}, robot config "
                        f"'{robot_config.name}' requires {value!r}"
                    )
        if meta.episode_id in self._metas:
            raise StoreError(f"{self.root}: episode '{meta.episode_id}' already exists")
        staged = child_path(self.root / STAGING_DIR, meta.episode_id, "episode id")
        shutil.rmtree(staged, ignore_errors=True)
        try:
            shutil.copytree(source_dir, staged)
            validate_episode_dir(staged, meta)
            self._publish(staged, meta.episode_id)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return meta


def missing_chunks(episode_dir: Path, name: str, arr: zarr.Array) -> list[str]:
    """Keys of the chunk (or shard) files that `arr`'s shape and chunk grid need but that are
    not on disk under `episode_dir/name`."""
    outer = arr.shards or arr.chunks
    grid = [range(math.ceil(size / chunk)) for size, chunk in zip(arr.shape, outer, strict=True)]
    keys = (arr.metadata.encode_chunk_key(coords) for coords in itertools.product(*grid))
    return [key for key in keys if not (episode_dir / name / key).is_file()]


def _missing_message(episode_id: str, name: str, arr: zarr.Array, missing: list[str]) -> str:
    total = math.prod(
        math.ceil(size / chunk) for size, chunk in zip(arr.shape, arr.shards or arr.chunks, strict=True)
    )
    return (
        f"episode {episode_id}: array '{name}' is missing {len(missing)} of its {total} chunk files "
        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); refusing to read it as zeros"
    )


def validate_episode_dir(path: Path, meta: EpisodeMeta) -> None:
    """Check that every array an episode needs is present, well-shaped, complete (every chunk
    file its shape needs is there) and decodable."""
    expected: dict[str, tuple[tuple[int, ...], str]] = {
        "state": ((meta.num_steps, meta.state_dim), "float32"),
        "state_time": ((meta.num_steps,), "float64"),
        "action": ((meta.num_steps, meta.action_dim), "float32"),
        "time": ((meta.num_steps,), "float64"),
    }
    for cam, shape in meta.cameras.items():
        expected[f"images/{cam}"] = ((meta.num_steps, *shape), "uint8")
        expected[f"image_time/{cam}"] = ((meta.num_steps,), "float64")
    try:
        group = zarr.open_group(LocalStore(path, read_only=True), mode="r")
        for name, (shape, dtype) in expected.items():
            arr = group[name]
            if not isinstance(arr, zarr.Array) or tuple(arr.shape) != shape or str(arr.dtype) != dtype:
                raise EpisodeValidationError(
                    f"episode {meta.episode_id}: '{name}' is "
                    f"{getattr(arr, 'shape', '?')} {getattr(arr, 'dtype', '?')}, "
                    f"expected {shape} {dtype}"
                )
            missing = missing_chunks(path, name, arr)
            if missing:
                raise EpisodeValidationError(_missing_message(meta.episode_id, name, arr, missing))
            arr = arr.with_config(STRICT_READS)
            for start in range(0, shape[0], 64):  # decode every chunk: a garbled file fails here
                values = np.asarray(arr[start : start + 64])
                if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
                    raise EpisodeValidationError(f"episode {meta.episode_id}: '{name}' has non-finite values")
    except EpisodeValidationError:
        raise
    except Exception as exc:
        raise EpisodeValidationError(
            f"episode {meta.episode_id}: unreadable data ({type(exc).__name__}: {exc})"
        ) from None
