"""``path/<class_name>/*.png|jpg|jpeg|bmp`` read with Pillow."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from service.spec import DatasetSpec

from .base import DatasetError, LoadedDataset, check_size, make_dataset, square_side
from .paths import ensure_inside

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# Pillow modes with one luminance channel; any other mode makes the whole set RGB.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def list_images(root: Path, roots: list[Path]) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class names and ``(real image path, class index)`` pairs; every folder and file
    must resolve inside the data roots (a symlink inside the tree may not point out)."""
    class_dirs = sorted(
        (p for p in root.iterdir() if _visible(p) and p.is_dir()), key=lambda p: p.name
    )
    if len(class_dirs) < 2:
        raise DatasetError(
            f"image folder {root} has {len(class_dirs)} class folder(s); expected at least 2 "
            f"subfolders <class_name>/ holding {'/'.join(IMAGE_SUFFIXES)} images",
            field="dataset.path",
            path=str(root),
        )
    items: list[tuple[Path, int]] = []
    for index, class_dir in enumerate(class_dirs):
        ensure_inside(class_dir, roots)
        files = sorted(
            p
            for p in class_dir.iterdir()
            if _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not files:
            raise DatasetError(
                f"class folder {class_dir} holds no {'/'.join(IMAGE_SUFFIXES)} images",
                field="dataset.path",
                path=str(class_dir),
            )
        items.extend((ensure_inside(f, roots, str(f)), index) for f in files)
    return [d.name for d in class_dirs], items


def _open(path: Path) -> Image.Image:
    """Open and decode one image; any failure is a DatasetError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
        return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Warning) as error:
        raise DatasetError(
            f"cannot read image {path}: {error}", field="dataset.path", path=str(path)
        ) from None


def _is_gray(path: Path) -> bool:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.mode in GRAY_MODES
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DatasetError(
            f"cannot read image {path}: {error}", field="dataset.path", path=str(path)
        ) from None


def load_image_folder(spec: DatasetSpec, folder: Path, roots: list[Path]) -> LoadedDataset:
    """Images converted to L if every image is grayscale, else RGB; resized to
    ``spec.image_size`` or, without one, all the size of the first image (else an error)."""
    if not folder.is_dir():
        raise DatasetError(
            f"image_folder path {spec.path!r} is not a directory",
            field="dataset.path",
            path=spec.path,
        )
    class_names, items = list_images(folder, roots)
    mode = "L" if all(_is_gray(path) for path, _ in items) else "RGB"
    channels = 1 if mode == "L" else 3
    first = _open(items[0][0])
    width, height = (spec.image_size,) * 2 if spec.image_size else first.size
    first.close()
    check_size(len(items), channels * width * height, f"image folder {spec.path!r}")
    pixels = np.empty((len(items), height, width, channels), dtype=np.uint8)
    for i, (path, _) in enumerate(items):
        image = _open(path)
        try:
            if image.size != (width, height):
                if not spec.image_size:
                    raise DatasetError(
                        f"image {path} is {image.size[0]}x{image.size[1]} but the first image "
                        f"is {width}x{height}; set dataset.image_size to resize them all",
                        field="dataset.image_size",
                        path=str(path),
                    )
                image = image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
            pixels[i] = np.asarray(image.convert(mode)).reshape(height, width, channels)
        finally:
            image.close()
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
    return make_dataset(
        x,
        np.array([label for _, label in items], dtype=np.int64),
        num_classes=len(class_names),
        val_fraction=spec.val_fraction,
        seed=spec.seed,
        name=f"image_folder:{folder.name}",
        image_size=square_side(x),
        class_names=class_names,
    )
