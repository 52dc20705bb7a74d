"""Image decoding, resizing and the preprocessed on-disk cache.

Every radiograph is decoded once per set of ``PreprocessSettings`` and stored in one compact
``uint8`` array, so training epochs read memory instead of PNG files. ``predict`` applies the
same ``load_and_preprocess`` function with the settings saved in a run, so a new image gets
exactly the preprocessing the model was trained with.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import pandas as pd

from fracture_lib import config
from fracture_lib.errors import FractureLibError, ImageReadError, ParameterError

# Bump when the preprocessing maths change, so old caches are not reused.
CACHE_FORMAT_VERSION = 1
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
        if not isinstance(self.img_size, (int, np.integer)) or self.img_size < 16:
            raise ParameterError(f"img_size={self.img_size!r} must be an integer of at least 16 pixels")
        if self.clahe_clip_limit <= 0:
            raise ParameterError(f"clahe_clip_limit={self.clahe_clip_limit} must be positive")
        if self.clahe_tile_grid < 1:
            raise ParameterError(f"clahe_tile_grid={self.clahe_tile_grid} must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PreprocessSettings":
        """Rebuild settings saved with ``to_dict`` (unknown keys are ignored)."""
        known = {key: values[key] for key in ("img_size", "clahe", "clahe_clip_limit", "clahe_tile_grid") if key in values}
        return cls(**known)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any MURA-like image (PNG/JPEG, 8/16-bit, grey/RGB/RGBA) as 8-bit greyscale (H, W).

    16-bit images are scaled by their own minimum-maximum range to 0..255. A missing, empty or
    undecodable file raises ``ImageReadError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found: check the path")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(path, f"{error.strerror}: check the file's permissions") from None
    if data.size == 0:
        raise ImageReadError(path, "the file is empty: replace it with a valid PNG or JPEG")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(path, "not a decodable PNG or JPEG image: replace or remove the file")
    return _to_grey_uint8(image)


def _to_grey_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a decoded image of any depth and channel count to 8-bit greyscale."""
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        else:
            image = image[:, :, 0]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    # Deeper images (16-bit, float) are stretched from their own range to 0..255.
    values = image.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def letterbox_geometry(height: int, width: int, img_size: int) -> tuple[float, int, int]:
    """Return ``(scale, pad_top, pad_left)`` of the aspect-preserving resize into a square.

    A pixel ``(row, col)`` of the original image lands at
    ``(row * scale + pad_top, col * scale + pad_left)`` in the model input.
    """
    scale = img_size / max(height, width)
    new_height = max(1, int(round(height * scale)))
    new_width = max(1, int(round(width * scale)))
    return scale, (img_size - new_height) // 2, (img_size - new_width) // 2


def preprocess_image(image: np.ndarray, settings: PreprocessSettings) -> np.ndarray:
    """Apply optional CLAHE, resize the long side to ``img_size`` and pad to a centred square."""
    if image.ndim != 2 or image.dtype != np.uint8:
        image = _to_grey_uint8(image)
    if settings.clahe:
        grid = (settings.clahe_tile_grid, settings.clahe_tile_grid)
        image = cv2.createCLAHE(clipLimit=settings.clahe_clip_limit, tileGridSize=grid).apply(image)
    height, width = image.shape
    size = settings.img_size
    scale, pad_top, pad_left = letterbox_geometry(height, width, size)
    new_height = max(1, int(round(height * scale)))
    new_width = max(1, int(round(width * scale)))
    # Area interpolation when shrinking avoids aliasing thin fracture lines away.
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
    """Preprocessed images aligned row for row with an index table."""

    images: np.ndarray
    index: pd.DataFrame
    settings: PreprocessSettings
    path: Path
    build_seconds: float
    size_bytes: int
    reused: bool

    def select(self, selection: str | Sequence[bool] | np.ndarray | pd.Series) -> tuple[np.ndarray, pd.DataFrame]:
        """Return ``(images, rows)`` of one split name (``"train"``) or a boolean mask."""
        if isinstance(selection, str):
            if selection not in set(self.index["split"]):
                raise ParameterError(
                    f"split {selection!r} has no images: choose from {', '.join(sorted(set(self.index['split'])))}")
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


def cache_key(index: pd.DataFrame, data_root: str | os.PathLike[str], settings: PreprocessSettings) -> str:
    """Return the cache folder name for these images and settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT_VERSION, "settings": settings.to_dict(),
                              "root": str(Path(data_root).resolve())}, sort_keys=True).encode())
    digest.update("\n".join(index["path"].astype(str)).encode())
    return f"{settings.img_size}px-{'clahe-' if settings.clahe else ''}{digest.hexdigest()[:16]}"


def build_cache(index: pd.DataFrame, data_root: str | os.PathLike[str], settings: PreprocessSettings,
                cache_dir: str | os.PathLike[str] | None = None, workers: int | None = None,
                progress: bool = True) -> ImageCache:
    """Decode and resize every image of ``index`` once; reuse the result while nothing changed."""
    if "path" not in index.columns:
        raise ParameterError("the index has no 'path' column: build it with fracture_lib.mura.build_index")
    index = index.reset_index(drop=True)
    data_root = Path(data_root)
    cache_root = Path(cache_dir) if cache_dir is not None else config.CACHE_DIR
    folder = cache_root / cache_key(index, data_root, settings)
    cached = _open_cache(folder, index, settings)
    if cached is not None:
        return cached

    start = time.perf_counter()
    images = _decode_all([data_root / path for path in index["path"]], settings, workers, progress)
    seconds = time.perf_counter() - start
    # Write into a temporary folder and rename it when complete.
    cache_root.mkdir(parents=True, exist_ok=True)
    temporary = cache_root / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    np.save(temporary / IMAGES_FILENAME, images)
    manifest = {
        "format": CACHE_FORMAT_VERSION,
        "settings": settings.to_dict(),
        "data_root": str(data_root.resolve()),
        "images": len(index),
        "paths": index["path"].astype(str).tolist(),
        "build_seconds": seconds,
        "images_per_second": len(index) / seconds if seconds > 0 else None,
        "size_bytes": int(images.nbytes),
    }
    (temporary / MANIFEST_FILENAME).write_text(json.dumps(manifest))
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(temporary, folder)
    except OSError:
        # Another process (a second worker) published the same cache first: keep theirs.
        shutil.rmtree(temporary, ignore_errors=True)
    return ImageCache(images, index, settings, folder, seconds, int(images.nbytes), reused=False)


def _open_cache(folder: Path, index: pd.DataFrame, settings: PreprocessSettings) -> ImageCache | None:
    """Return the cache in ``folder`` when it matches the index and settings, else ``None``."""
    manifest_path = folder / MANIFEST_FILENAME
    if not manifest_path.is_file() or not (folder / IMAGES_FILENAME).is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        images = np.load(folder / IMAGES_FILENAME, mmap_mode="r")
    except (OSError, ValueError):
        return None
    size = settings.img_size
    if (manifest.get("format") != CACHE_FORMAT_VERSION or manifest.get("settings") != settings.to_dict()
            or manifest.get("paths") != index["path"].astype(str).tolist()
            or images.shape != (len(index), size, size) or images.dtype != np.uint8):
        return None
    # Read the whole array into memory: training touches every row every epoch.
    return ImageCache(np.array(images), index, settings, folder, float(manifest.get("build_seconds", 0.0)),
                      int(manifest.get("size_bytes", images.nbytes)), reused=True)


def _decode_all(paths: list[Path], settings: PreprocessSettings, workers: int | None, progress: bool) -> np.ndarray:
    """Decode and resize ``paths`` in parallel threads (OpenCV releases the GIL)."""
    from tqdm.auto import tqdm

    size = settings.img_size
    images = np.zeros((len(paths), size, size), dtype=np.uint8)
    workers = workers or max(1, os.cpu_count() or 1)

    def decode(position: int) -> None:
        images[position] = load_and_preprocess(paths[position], settings)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        iterator = pool.map(decode, range(len(paths)))
        for _ in tqdm(iterator, total=len(paths), desc=f"caching {size}px images", unit="img",
                      disable=not progress, mininterval=1.0):
            pass
    return images


def clear_cache(cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Delete every preprocessed cache (they are rebuilt on demand)."""
    folder = Path(cache_dir) if cache_dir is not None else config.CACHE_DIR
    if folder.exists() and not folder.is_dir():
        raise FractureLibError(f"cache path {folder} is not a folder: remove it")
    shutil.rmtree(folder, ignore_errors=True)
