"""Image geometry and augmentation, defined once and shared by training and serving.

The study (Methods): "For the training set only, images were first cropped 40% top/bottom and
30% left/right ... This resulted in rectangular images which were made square by applying a
256×256 pixel centre crop. After this crop the random crop to 224×224 pixels was applied",
with flips and rotations. We read "40% top/bottom" as 40 % of the height in total — 20 % off
the top and 20 % off the bottom — and "30% left/right" as 15 % off each side: removing 40 %
from *each* edge would leave only the central 20 % of the height, far too little for a short-
axis slice, while 20 %/15 % per edge keeps the heart and drops the chest wall and arms.

Two deliberate, documented choices where the paper is silent or cannot apply as written:

* Our PNGs are 384–448 px, so a trimmed image is ~230–270 px high: a plain 256 centre crop
  would pad it. The trimmed image is therefore enlarged (bilinear) until its shorter side is
  256 when it is smaller (``resize="if_smaller"``; the CPU preset always rescales).
* The paper applies the trim to the training set only and does not say how validation/test
  images were framed. Feeding a network trained on trimmed views an untrimmed one changes the
  field of view, so :class:`EvalPreset` applies the same deterministic trim, square crop and a
  *centre* 224 crop. ``/predict`` uses that preset, so training and serving cannot drift.

:func:`prepare_image` (deterministic, done once per image, uint8) is split from the random
part (:class:`TrainPreset`, done per batch on the training device with one ``grid_sample``:
crop offset, flips and rotation in one affine map), so a GPU never waits for a CPU pipeline.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ml_backend.config import TrainConfig

#: Intensity normalisation applied after scaling to [0, 1]; fixed constants (not data-derived)
#: so a checkpoint carries no hidden dependence on its training set's statistics.
NORM_MEAN = 0.5
NORM_STD = 0.25

#: Most pixels an image may have to be decoded (4096²: a 16-bit 2048² export is a quarter of
#: it). Decoding one this size took 0.08 s of CPU and +48 MB (a 32 MB RGBA file 0.12 s, +56
#: MB); anything larger is refused from its header, before its pixels are read
#: (docs/bench/security.md).
MAX_IMAGE_PIXELS = 4096 * 4096
#: Most an image's long side may exceed its short side. Slices are near square; a 4:1 image
#: already loses three quarters of itself to the square crop.
MAX_ASPECT_RATIO = 4.0
#: How far :func:`prepare_image` may enlarge an image: its long side after scaling is at most
#: this many times the square it is cut to.
MAX_SCALED_SIDE_FACTOR = 8
#: Image formats decoded: those Label Studio shows and ingestion writes (no TIFF, no PSD...).
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


class ImageRefusedError(ValueError):
    """An image refused before it was decoded or scaled: too many pixels, too elongated, or a
    decompression bomb. The message gives the size and the limit."""


def check_image_size(width: int, height: int) -> None:
    """Refuse (:class:`ImageRefusedError`) an image whose size breaks :data:`MAX_IMAGE_PIXELS`
    or :data:`MAX_ASPECT_RATIO`; called on the header's size, before any pixel is decoded."""
    if width < 1 or height < 1:
        raise ImageRefusedError(f"image of {width}×{height} pixels is empty")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageRefusedError(
            f"image of {width}×{height} pixels is larger than {MAX_IMAGE_PIXELS} pixels "
            "(4096×4096): export the slice at its native resolution"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageRefusedError(
            f"image of {width}×{height} pixels is {ratio:.1f} times longer than it is wide "
            f"(at most {MAX_ASPECT_RATIO:g}): not a slice"
        )


def prepare_image(image: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Trim the periphery, rescale if needed and centre-crop to ``config.square`` (uint8 2-D)."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got an array of shape {image.shape}")
    h, w = image.shape
    top = int(round(h * config.trim_vertical / 2))
    left = int(round(w * config.trim_horizontal / 2))
    trimmed = image[top : h - top, left : w - left]
    th, tw = trimmed.shape
    if th < 1 or tw < 1:
        raise ValueError(f"image of shape {image.shape} is too small to trim")
    short = min(th, tw)
    if config.resize == "always" or short < config.square:
        scale = config.square / short
        # Bound the work before doing it: a 2×60,000 image would become 256×7.7 M pixels.
        longest = round(max(th, tw) * scale)
        if longest > MAX_SCALED_SIDE_FACTOR * config.square:
            raise ImageRefusedError(
                f"image of shape {image.shape} would be scaled to a long side of {longest} "
                f"pixels (at most {MAX_SCALED_SIDE_FACTOR * config.square}): too elongated"
            )
        size = (max(config.square, round(tw * scale)), max(config.square, round(th * scale)))
        trimmed = np.asarray(Image.fromarray(trimmed).resize(size, Image.BILINEAR))
        th, tw = trimmed.shape
    y0 = (th - config.square) // 2
    x0 = (tw - config.square) // 2
    return np.ascontiguousarray(trimmed[y0 : y0 + config.square, x0 : x0 + config.square])


def load_grayscale(path) -> np.ndarray:
    """Read an image file (a path or a binary file object) as a 2-D uint8 array, colour
    converted to luminance. Its size is checked from the header first
    (:func:`check_image_size`), and Pillow's decompression-bomb warning is an error:
    :class:`ImageRefusedError` either way, before the pixels are decoded. Other formats than
    :data:`IMAGE_FORMATS` and broken files raise OSError."""
    # Process-wide and idempotent (not a catch_warnings block, which threads would race on):
    # the warning Pillow gives for 89 M+ pixels, with the pixels still decoded, becomes an error.
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    try:
        img = Image.open(path, formats=IMAGE_FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageRefusedError(f"decompression bomb refused ({exc})") from None
    with img:
        check_image_size(*img.size)
        if img.mode != "L":
            return np.asarray(img.convert("L"), dtype=np.uint8)
        return np.asarray(img, dtype=np.uint8)


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) batch → normalised float."""
    return (batch.float() / 255.0 - NORM_MEAN) / NORM_STD


@dataclass(frozen=True)
class TrainPreset:
    """Random crop, flips and rotation applied to a batch of prepared uint8 images."""

    crop: int
    max_rotation_deg: float = 15.0
    hflip: bool = True
    vflip: bool = True

    @classmethod
    def from_config(cls, config: TrainConfig) -> TrainPreset:
        """The training preset for a config."""
        return cls(config.crop, config.max_rotation_deg, config.hflip, config.vflip)

    def __call__(
        self, batch: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment ``batch`` (N×1×S×S uint8, on any device) to N×1×crop×crop normalised floats."""
        n, _, size, _ = batch.shape
        dev = batch.device

        def uniform(*shape: int) -> torch.Tensor:
            where = generator.device if generator is not None else dev
            return torch.rand(*shape, generator=generator, device=where).to(dev)

        angle = (uniform(n) * 2 - 1) * math.radians(self.max_rotation_deg)
        sx = torch.where(uniform(n) < 0.5, -1.0, 1.0) if self.hflip else torch.ones(n, device=dev)
        sy = torch.where(uniform(n) < 0.5, -1.0, 1.0) if self.vflip else torch.ones(n, device=dev)
        # The crop's top-left corner is a whole pixel, as in a plain RandomCrop.
        span = size - self.crop
        ox = torch.floor(uniform(n) * (span + 1)).clamp(max=span)
        oy = torch.floor(uniform(n) * (span + 1)).clamp(max=span)
        ratio = self.crop / size
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0] = ratio * cos * sx
        theta[:, 0, 1] = -ratio * sin * sy
        theta[:, 1, 0] = ratio * sin * sx
        theta[:, 1, 1] = ratio * cos * sy
        theta[:, 0, 2] = (ox + self.crop / 2) / (size / 2) - 1
        theta[:, 1, 2] = (oy + self.crop / 2) / (size / 2) - 1
        grid = torch.nn.functional.affine_grid(
            theta, [n, 1, self.crop, self.crop], align_corners=False
        )
        out = torch.nn.functional.grid_sample(
            batch.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return normalize(out)


@dataclass(frozen=True)
class EvalPreset:
    """Deterministic framing for validation, test and ``/predict``: centre crop, normalise."""

    config: TrainConfig

    @property
    def crop(self) -> int:
        """Side of the network's input."""
        return self.config.crop

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Centre-crop a prepared N×1×S×S uint8 batch and normalise it."""
        size = batch.shape[-1]
        o = (size - self.crop) // 2
        return normalize(batch[..., o : o + self.crop, o : o + self.crop])

    def images_to_batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Raw 2-D uint8 images (any size) → a normalised N×1×crop×crop float batch."""
        prepared = np.stack([prepare_image(img, self.config) for img in images])
        return self(torch.from_numpy(prepared).unsqueeze(1))
