"""Image decoding, resizing and the preprocessed on-disk cache.

Every radiograph is decoded once per set of ``PreprocessSettings`` and stored in one compact
``uint8`` array, so training epochs read memory instead of PNG files. ``predict`` applies the
same decoder and ``preprocess_image`` with the settings saved in a run, so a new image gets
exactly the preprocessing the model was trained with.

The cache lives in ``config.CACHE_DIR/<key>/`` as ``images.npy`` (``uint8 (N, S, S)``) and
``manifest.json`` (settings, paths, file sizes and modification times, build time). The key
hashes the settings, the data root and every file's path, size and modification time, so the
cache is rebuilt when the settings, the list of images or any image file change. Labels and
splits do not change pixels, so a new patient split reuses the cache; and a cache built for
more images (all body parts) serves any subset of them (one part) without decoding again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import pandas as pd

from fracture_lib import config
from fracture_lib.errors import FractureLibError, ImageReadError, ParameterError
from fracture_lib.files import replace_path
# The one decoder (re-exported: callers have long used preprocess.load_image).
from fracture_lib.imageio import load_image, to_grey_uint8, unscorable_reason  # noqa: F401

# Bump when the preprocessing maths change, so old caches are not reused.
CACHE_FORMAT_VERSION = 2
IMAGES_FILENAME = "images.npy"
MANIFEST_FILENAME = "manifest.json"


@dataclass(frozen=True)
class PreprocessSettings:
    """How a radiograph becomes a square 8-bit model input."""

    img_size: int = 128
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.img_size, bool) or not isinstance(self.img_size, (int, np.integer)) or self.img_size < 16:
            raise ParameterError(f"img_size={self.img_size!r} must be an integer of at least 16 pixels")
        if not isinstance(self.clahe, (bool, np.bool_)):
            raise ParameterError(f"clahe={self.clahe!r} must be True or False")
        if not self.clahe_clip_limit > 0:
            raise ParameterError(f"clahe_clip_limit={self.clahe_clip_limit} must be positive")
        if not isinstance(self.clahe_tile_grid, (int, np.integer)) or self.clahe_tile_grid < 1:
            raise ParameterError(f"clahe_tile_grid={self.clahe_tile_grid!r} must be an integer of at least 1")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dictionary."""
        return {"img_size": int(self.img_size), "clahe": bool(self.clahe),
                "clahe_clip_limit": float(self.clahe_clip_limit), "clahe_tile_grid": int(self.clahe_tile_grid)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PreprocessSettings":
        """Rebuild settings saved with ``to_dict`` (unknown keys are ignored)."""
        known = {key: values[key] for key in ("img_size", "clahe", "clahe_clip_limit", "clahe_tile_grid") if key in values}
        return cls(**known)


def letterbox_geometry(height: int, width: int, img_size: int) -> tuple[float, int, int]:
    """Return ``(scale, pad_top, pad_left)`` of the aspect-preserving resize into a square.

    A pixel ``(row, col)`` of the original image lands at
    ``(row * scale + pad_top, col * scale + pad_left)`` in the model input.
    """
    scale = img_size / max(height, width)
    new_height, new_width = _resized_shape(height, width, scale)
    return scale, (img_size - new_height) // 2, (img_size - new_width) // 2


def _resized_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """The image's height and width after scaling, at least one pixel each."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def apply_clahe(image: np.ndarray, settings: PreprocessSettings) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a uint8 (H, W) image."""
    grid = (int(settings.clahe_tile_grid), int(settings.clahe_tile_grid))
    return cv2.createCLAHE(clipLimit=float(settings.clahe_clip_limit), tileGridSize=grid).apply(image)


def preprocess_image(image: np.ndarray, settings: PreprocessSettings) -> np.ndarray:
    """Apply optional CLAHE, resize the long side to ``img_size`` and pad to a centred square.

    CLAHE runs at the original resolution, where its tiles see the anatomy in full detail.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        image = to_grey_uint8(image)
    if settings.clahe:
        image = apply_clahe(image, settings)
    height, width = image.shape
    size = int(settings.img_size)
    scale, pad_top, pad_left = letterbox_geometry(height, width, size)
    new_height, new_width = _resized_shape(height, width, scale)
    # Area interpolation when shrinking keeps thin fracture lines instead of aliasing them away.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_width, new_height), interpolation=interpolation)
    square = np.zeros((size, size), dtype=np.uint8)
    square[pad_top:pad_top + new_height, pad_left:pad_left + new_width] = resized
    return square


def load_and_preprocess(path: str | os.PathLike[str], settings: PreprocessSettings) -> np.ndarray:
    """Read one image file and return its ``(img_size, img_size)`` uint8 model input."""
    return preprocess_image(load_image(path), settings)


@dataclass
class ImageCache:
    """Preprocessed images aligned row for row with an index table.

    ``images`` is a read-only memory map of ``path / images.npy`` when the cache was reused
    (rows are read from disk on first touch) and an in-memory array when it was just built.
    ``build_seconds`` is the time the cache took to build (on its first run), ``load_seconds``
    the time this call took, ``size_bytes`` the size of ``images.npy`` on disk.
    """

    images: np.ndarray
    index: pd.DataFrame
    settings: PreprocessSettings
    path: Path
    build_seconds: float
    size_bytes: int
    reused: bool
    load_seconds: float = 0.0

    def select(self, selection: str | Sequence[bool] | np.ndarray | pd.Series) -> tuple[np.ndarray, pd.DataFrame]:
        """Return ``(images, rows)`` of one split name (``"train"``) or a boolean mask.

        The images are an in-memory copy, ready for ``pipeline.make_dataset``.
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
        return np.asarray(self.images[positions]), self.index.iloc[positions].reset_index(drop=True)

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
    or sliced from a larger cache that holds all the wanted images. Otherwise the images are
    decoded in parallel threads (OpenCV releases the GIL; ``workers`` defaults to the number of
    CPU cores) with a progress bar, and written atomically. An unreadable image raises
    ``ImageReadError`` naming it, and nothing is written.
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

    images = _decode_all([data_root / path for path in paths], settings, workers, progress)
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
    _write_cache(folder, images, manifest)
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


def _write_cache(folder: Path, images: np.ndarray, manifest: dict[str, Any]) -> None:
    """Write the cache into a temporary sibling folder and rename it into place when complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        np.save(temporary / IMAGES_FILENAME, images)
        (temporary / MANIFEST_FILENAME).write_text(json.dumps(manifest))
        replace_path(temporary, folder)
    except OSError as error:
        # Another process (a second worker) may have published the same cache first; otherwise
        # (a full disk) the images are still in memory, so the caller goes on without the file.
        shutil.rmtree(temporary, ignore_errors=True)
        if not (folder / MANIFEST_FILENAME).is_file():
            warnings.warn(f"could not write the image cache {folder} ({error}): it will be rebuilt next time",
                          stacklevel=3)


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
                   settings: PreprocessSettings) -> tuple[np.ndarray, Path, dict] | None:
    """Slice the images out of a larger cache that holds every wanted (unchanged) image."""
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
        return np.asarray(images[[positions[path] for path in paths]]), folder, manifest
    return None


def _decode_all(paths: list[Path], settings: PreprocessSettings, workers: int | None, progress: bool) -> np.ndarray:
    """Decode and resize ``paths`` in parallel threads (OpenCV releases the GIL while it works)."""
    from tqdm import tqdm

    size = settings.img_size
    images = np.zeros((len(paths), size, size), dtype=np.uint8)
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
    return images


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
