"""The preprocessed on-disk image cache: every radiograph decoded once, then read memory-mapped.

Every radiograph is decoded once per set of ``PreprocessSettings`` and stored in one compact
``uint8`` array, so training epochs read memory instead of PNG files. The cache lives in
``config.CACHE_DIR/<key>/`` as ``images.npy`` (``uint8 (N, S, S)``) and ``manifest.json``
(settings, paths, file sizes and modification times, build time). The key hashes the settings,
the data root and every file's path, size and modification time, so the cache is rebuilt when the
settings, the list of images or any image file change. Labels and splits do not change pixels, so
a new patient split reuses the cache; and a cache built for more images (all body parts) serves
any subset of them (one part) without decoding again.

Memory stays at the cache's own size, whatever the data set: the images are decoded straight
into a memory-mapped file (the disk space reserved first, so a full disk is an error at the start,
not a crash half-way), then read back memory-mapped; a split (``ImageCache.select``) or a subset
of a larger cache is an ``ImageRows`` view (the big array and row numbers), which the input
pipeline gathers batch by batch. Nothing copies the images as a whole (MURA's 40,005 films at
320 px are a 4.1 GB cache). The batches are read from the file (``image_rows.gather_rows``), not
through the mapping, so an epoch does not leave the whole cache counted in the training
process's resident memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fracture_lib import config
from fracture_lib.errors import FractureLibError, ImageReadError, ParameterError
from fracture_lib.files import replace_path
from fracture_lib.image_rows import ImageRows, source_and_positions
from fracture_lib.imageio import load_image, unscorable_reason
from fracture_lib.preprocess import PreprocessSettings, preprocess_image

# Bump when the preprocessing maths change, so old caches are not reused.
CACHE_FORMAT_VERSION = 2
IMAGES_FILENAME = "images.npy"
MANIFEST_FILENAME = "manifest.json"


@dataclass
class ImageCache:
    """Preprocessed images aligned row for row with an index table.

    ``images`` is a read-only memory map of ``path / images.npy`` (rows are read from disk on
    first touch), or an ``ImageRows`` view of a larger cache's map; an in-memory array only when
    the cache could not be written. ``build_seconds`` is the time the cache took to build (on its
    first run), ``load_seconds`` the time this call took, ``size_bytes`` the size of
    ``images.npy`` on disk.
    """

    images: np.ndarray | ImageRows
    index: pd.DataFrame
    settings: PreprocessSettings
    path: Path
    build_seconds: float
    size_bytes: int
    reused: bool
    load_seconds: float = 0.0

    def select(self, selection: str | Sequence[bool] | np.ndarray | pd.Series) -> tuple[ImageRows, pd.DataFrame]:
        """Return ``(images, rows)`` of one split name (``"train"``) or a boolean mask.

        The images are an ``ImageRows`` view (no copy), ready for ``pipeline.make_dataset``;
        ``np.asarray(images)`` makes an in-memory copy.
        """
        if isinstance(selection, str):
            present = sorted(set(self.index["split"])) if "split" in self.index.columns else []
            if selection not in present:
                raise ParameterError(f"split {selection!r} has no images: choose from {', '.join(present) or 'none'}")
            mask = (self.index["split"] == selection).to_numpy()
        else:
            mask = np.asarray(selection, dtype=bool)
            if mask.shape != (len(self.index),):
                raise ParameterError(f"mask has {mask.shape} entries, the cache {len(self.index)} rows")
        positions = np.flatnonzero(mask)
        source, offsets = source_and_positions(self.images)
        rows = ImageRows(source, positions if offsets is None else offsets[positions])
        return rows, self.index.iloc[positions].reset_index(drop=True)

    @property
    def images_per_second(self) -> float:
        """Decode-and-resize speed of the build that made this cache."""
        return len(self.index) / self.build_seconds if self.build_seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """The cache's statistics as a flat dictionary (for tables and logs)."""
        return {"images": len(self.index), "img_size": int(self.settings.img_size), "clahe": bool(self.settings.clahe),
                "reused": self.reused, "build_seconds": round(self.build_seconds, 3),
                "build_images_per_second": round(self.images_per_second, 1),
                "load_seconds": round(self.load_seconds, 3), "size_mb": round(self.size_bytes / 1e6, 2),
                "folder": str(self.path)}


def _file_signatures(paths: list[Path]) -> tuple[list[int], list[int]]:
    """Sizes and modification times (ns) of ``paths``; a missing file raises ``ImageReadError``."""
    sizes, mtimes = [], []
    for path in paths:
        try:
            status = path.stat()
        except OSError:
            raise ImageReadError(path, "file not found: check the data root, or rebuild the index") from None
        sizes.append(int(status.st_size))
        mtimes.append(int(status.st_mtime_ns))
    return sizes, mtimes


def _settings_prefix(settings: PreprocessSettings) -> str:
    """The readable start of a cache folder name, shared by every cache with these settings."""
    digest = hashlib.sha256(json.dumps(settings.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
    return f"{settings.img_size}px-{'clahe-' if settings.clahe else ''}{digest}"


def cache_key(index: pd.DataFrame, data_root: str | os.PathLike[str], settings: PreprocessSettings,
              signatures: tuple[list[int], list[int]] | None = None) -> str:
    """Return the cache folder name for these images (paths and file contents) and settings."""
    paths = index["path"].astype(str).tolist()
    if signatures is None:
        signatures = _file_signatures([Path(data_root) / path for path in paths])
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT_VERSION, "settings": settings.to_dict(),
                              "root": str(Path(data_root).resolve())}, sort_keys=True).encode())
    for path, size, mtime in zip(paths, *signatures):
        digest.update(f"{path}\t{size}\t{mtime}\n".encode())
    return f"{_settings_prefix(settings)}-{digest.hexdigest()[:16]}"


def build_cache(index: pd.DataFrame, data_root: str | os.PathLike[str], settings: PreprocessSettings,
                cache_dir: str | os.PathLike[str] | None = None, workers: int | None = None,
                progress: bool = True) -> ImageCache:
    """Decode and resize every image of ``index`` once; reuse the result while nothing changed.

    Returns an ``ImageCache`` whose ``images`` are aligned with ``index.reset_index(drop=True)``.
    A cache is reused when the settings and every image (path, size, modification time) match,
    or viewed inside a larger cache that holds all the wanted images. Otherwise the images are
    decoded in parallel threads (OpenCV releases the GIL; ``workers`` defaults to the number of
    CPU cores) with a progress bar, straight into the cache file, which is published atomically.
    An unreadable image raises ``ImageReadError`` naming it, and nothing is written.
    """
    if not isinstance(settings, PreprocessSettings):
        raise ParameterError(f"settings must be a PreprocessSettings, got {type(settings).__name__}")
    if "path" not in index.columns:
        raise ParameterError("the index has no 'path' column: build it with fracture_lib.datasets.build_index")
    if len(index) == 0:
        raise ParameterError("the index is empty: check the data root and the body parts")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ParameterError(f"workers={workers!r} must be a positive integer (or None for one per CPU core)")
    start = time.perf_counter()
    index = index.reset_index(drop=True)
    data_root = Path(data_root)
    cache_root = Path(cache_dir) if cache_dir is not None else config.CACHE_DIR
    paths = index["path"].astype(str).tolist()
    signatures = _file_signatures([data_root / path for path in paths])
    folder = cache_root / cache_key(index, data_root, settings, signatures)

    found = _open_cache(folder, paths, signatures, settings) or _open_superset(cache_root, data_root, paths,
                                                                              signatures, settings)
    if found is not None:
        images, source, manifest = found
        return ImageCache(images, index, settings, source, float(manifest.get("build_seconds", 0.0)),
                          _file_size(source / IMAGES_FILENAME), reused=True,
                          load_seconds=time.perf_counter() - start)

    staging, target = _reserve_images(folder, (len(paths), settings.img_size, settings.img_size))
    try:
        _decode_all([data_root / path for path in paths], settings, target, workers, progress)
    except BaseException:
        # An unreadable image (or Ctrl-C): nothing is published.
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    manifest = {
        "format": CACHE_FORMAT_VERSION,
        "settings": settings.to_dict(),
        "data_root": str(data_root.resolve()),
        "images": len(index),
        "index_fingerprint": _index_fingerprint(index),
        "build_seconds": seconds,
        "images_per_second": len(index) / seconds if seconds > 0 else None,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "paths": paths,
        "sizes": signatures[0],
        "mtimes_ns": signatures[1],
    }
    images = _publish(staging, folder, target, manifest, settings)
    return ImageCache(images, index, settings, folder, seconds, _file_size(folder / IMAGES_FILENAME) or images.nbytes,
                      reused=False, load_seconds=seconds)


def _index_fingerprint(index: pd.DataFrame) -> str | None:
    """The index's fingerprint (recorded in the manifest for reference), when it has the columns."""
    if not {"path", "label", "split"} <= set(index.columns):
        return None
    from fracture_lib.datasets import index_fingerprint

    return index_fingerprint(index)


def _file_size(path: Path) -> int:
    """Size of a file in bytes, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _reserve_images(folder: Path, shape: tuple[int, int, int]) -> tuple[Path | None, np.ndarray]:
    """A new staging folder beside ``folder`` and a writable memory map of its ``images.npy``.

    The staging folder has a unique name (two processes building the same cache never share or
    delete each other's), and is renamed into place when the cache is complete. The disk space
    is allocated up front where the system can (``posix_fallocate``; not on macOS) because a
    memory-mapped write to a full disk cannot fail politely later: it kills the process. When
    the folder cannot be written, returns ``(None, array in memory)``: a cache of one use.
    """
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
        path = staging / IMAGES_FILENAME
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        allocate = getattr(os, "posix_fallocate", None)
        if allocate is not None:
            with open(path, "r+b") as handle:
                allocate(handle.fileno(), 0, path.stat().st_size)
        return staging, images
    except OSError as error:
        # No space left, or a read-only folder: decode into memory, as a cache of one use.
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        warnings.warn(f"could not write the image cache {folder} ({error}): the images are kept in memory "
                      "and will be decoded again next time", stacklevel=3)
        return None, np.zeros(shape, dtype=np.uint8)


def _publish(staging: Path | None, folder: Path, images: np.ndarray, manifest: dict[str, Any],
             settings: PreprocessSettings) -> np.ndarray:
    """Complete the staging folder, rename it into place, and return the published images memory-mapped.

    When another process published a complete cache under the same name meanwhile, that one is
    used and ours discarded (the key makes them identical). When the images could not be written
    to disk, or the rename fails, they are returned as they are: in memory, or a memory map of the
    removed staging file (the map stays readable until it is dropped), never copied.
    """
    if staging is None:
        return images
    existing = _complete_images(folder, manifest, settings)
    if existing is not None:
        shutil.rmtree(staging, ignore_errors=True)
        return existing
    try:
        images.flush()
        (staging / MANIFEST_FILENAME).write_text(json.dumps(manifest))
        replace_path(staging, folder)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        existing = _complete_images(folder, manifest, settings)
        if existing is not None:
            return existing
        warnings.warn(f"could not write the image cache {folder} ({error}): it will be rebuilt next time",
                      stacklevel=3)
        return images
    del images
    published = _load_images(folder, manifest, settings)
    if published is None:
        raise FractureLibError(f"the image cache {folder} was written but cannot be read back: "
                               f"delete the folder and run again")
    return published


def _complete_images(folder: Path, manifest: dict[str, Any], settings: PreprocessSettings) -> np.ndarray | None:
    """The images of a complete cache in ``folder`` holding exactly ``manifest``'s images, or None."""
    found = _open_cache(folder, manifest["paths"], (manifest["sizes"], manifest["mtimes_ns"]), settings)
    return None if found is None else found[0]


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete cache folder of this format, or None."""
    try:
        manifest = json.loads((folder / MANIFEST_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT_VERSION:
        return None
    return manifest


def _load_images(folder: Path, manifest: dict[str, Any], settings: PreprocessSettings) -> np.ndarray | None:
    """Memory-map ``images.npy`` when its shape and type match the manifest and settings."""
    try:
        images = np.load(folder / IMAGES_FILENAME, mmap_mode="r")
    except (OSError, ValueError):
        return None
    size = settings.img_size
    if images.dtype != np.uint8 or images.shape != (len(manifest.get("paths", [])), size, size):
        return None
    return images


def _open_cache(folder: Path, paths: list[str], signatures: tuple[list[int], list[int]],
                settings: PreprocessSettings) -> tuple[np.ndarray, Path, dict] | None:
    """Return ``(images, folder, manifest)`` when ``folder`` holds exactly these images."""
    manifest = _read_manifest(folder)
    if (manifest is None or manifest.get("settings") != settings.to_dict() or manifest.get("paths") != paths
            or manifest.get("sizes") != signatures[0] or manifest.get("mtimes_ns") != signatures[1]):
        return None
    images = _load_images(folder, manifest, settings)
    return None if images is None else (images, folder, manifest)


def _open_superset(cache_root: Path, data_root: Path, paths: list[str], signatures: tuple[list[int], list[int]],
                   settings: PreprocessSettings) -> tuple[ImageRows, Path, dict] | None:
    """View the images inside a larger cache that holds every wanted (unchanged) image."""
    if not cache_root.is_dir():
        return None
    wanted = {path: (size, mtime) for path, size, mtime in zip(paths, *signatures)}
    for folder in sorted(cache_root.glob(f"{_settings_prefix(settings)}-*")):
        manifest = _read_manifest(folder)
        if (manifest is None or manifest.get("settings") != settings.to_dict()
                or manifest.get("data_root") != str(data_root.resolve()) or len(manifest.get("paths", [])) < len(paths)):
            continue
        stored = {path: (size, mtime) for path, size, mtime in
                  zip(manifest["paths"], manifest.get("sizes", []), manifest.get("mtimes_ns", []))}
        if any(stored.get(path) != signature for path, signature in wanted.items()):
            continue
        images = _load_images(folder, manifest, settings)
        if images is None:
            continue
        positions = {path: position for position, path in enumerate(manifest["paths"])}
        return ImageRows(images, [positions[path] for path in paths]), folder, manifest
    return None


def _decode_all(paths: list[Path], settings: PreprocessSettings, images: np.ndarray, workers: int | None,
                progress: bool) -> None:
    """Decode and resize ``paths`` into ``images`` in parallel threads (OpenCV releases the GIL)."""
    from tqdm import tqdm

    size = settings.img_size
    workers = workers or max(1, os.cpu_count() or 1)
    unscorable: dict[int, str] = {}

    def decode(position: int) -> None:
        image = load_image(paths[position])
        reason = unscorable_reason(image)
        if reason is not None:
            unscorable[position] = reason
        images[position] = preprocess_image(image, settings)

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        # pool.map raises the first worker error (an ImageReadError naming the file) right here.
        results = pool.map(decode, range(len(paths)))
        for _ in tqdm(results, total=len(paths), desc=f"caching {len(paths)} images at {size} px", unit="img",
                      disable=not progress, mininterval=1.0, leave=False):
            pass
    except BaseException:
        # Stop at the first unreadable image (or Ctrl-C) instead of decoding the rest.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if unscorable:
        _warn_unscorable({paths[position]: reason for position, reason in sorted(unscorable.items())})


def _warn_unscorable(reasons: dict[Path, str]) -> None:
    """Warn that images ``predict`` would refuse (blank or tiny) are being cached for a model."""
    first, reason = next(iter(reasons.items()))
    warnings.warn(f"{len(reasons)} image(s) too small or blank to judge are in the cache, e.g. {first}: {reason}; "
                  "a model will train or be scored on them as they are: leave them out with "
                  "`index --verify-images --drop-missing` (verify_images=True, drop_missing=True)",
                  UserWarning, stacklevel=4)


def clear_cache(cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Delete every preprocessed cache (they are rebuilt on demand)."""
    folder = Path(cache_dir) if cache_dir is not None else config.CACHE_DIR
    if folder.exists() and not folder.is_dir():
        raise FractureLibError(f"cache path {folder} is not a folder: remove it")
    shutil.rmtree(folder, ignore_errors=True)
