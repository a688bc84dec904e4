"""Images from a folder of class folders (``cats/001.png``, ``dogs/002.jpg``), made into
the model's inputs by its own image processor when it has one (a Hugging Face
``preprocessor_config.json``), else resized to the model's size and scaled to [0, 1].

Class names are the folder names: the model's own ids for them when it has named classes
(its ``label2id``, matched case-insensitively), else sorted. A folder with ``train/`` and
``test/`` (or ``val/``) inside, each holding class folders, keeps that split; otherwise
20% of the images are held out.

Example::

    bundle = load_image_folder(Path("photos"), preprocessing=pre)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compresskit.data.bundle import DataBundle, split
from compresskit.data.files import label_ids
from compresskit.data.preprocessing import Preprocessing
from compresskit.errors import CompressKitError, first_line

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
EVAL_FOLDERS = ("test", "val", "validation", "eval")


def _class_folders(root: Path) -> dict[str, list[Path]]:
    return {
        folder.name: files
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        if (files := sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
    }


def _read(files: list[Path], preprocessing: Preprocessing | None) -> torch.Tensor:
    from PIL import Image

    mode = "L" if preprocessing is not None and preprocessing.channels == 1 else "RGB"
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(image.convert(mode))
        except OSError as error:
            raise CompressKitError(
                f"--data {file}: not a readable image ({first_line(error)})"
            ) from None
    processor = preprocessing.image_processor if preprocessing is not None else None
    if processor is not None:
        return processor(images=images, return_tensors="pt")["pixel_values"].float()  # type: ignore[no-any-return]
    size = preprocessing.image_size if preprocessing is not None else None
    if size is not None:
        images = [image.resize((size[1], size[0]), Image.Resampling.BILINEAR) for image in images]
    shapes = {image.size for image in images}
    if len(shapes) > 1:
        raise CompressKitError(
            f"--data {files[0].parent.parent}: images differ in size ({sorted(shapes)[:2]} ...) "
            "and the model has no image processor to resize them; resize them to one size"
        )
    arrays: list[Any] = [np.asarray(image, dtype=np.float32) / 255.0 for image in images]
    pixels = torch.from_numpy(np.stack(arrays))
    return pixels.unsqueeze(1) if pixels.dim() == 3 else pixels.permute(0, 3, 1, 2).contiguous()


def load_image_folder(
    root: Path,
    *,
    preprocessing: Preprocessing | None,
    seed: int = 0,
    calibration_size: int = 256,
) -> DataBundle:
    """An image classification bundle from class folders (see the module docstring)."""
    if preprocessing is not None and preprocessing.modality != "image":
        raise CompressKitError(
            f"--data {root}: an image folder, but the model takes text; give a table of texts"
        )
    eval_root = next((root / n for n in EVAL_FOLDERS if (root / n).is_dir()), None)
    train_root = root / "train" if (root / "train").is_dir() and eval_root else root
    classes = _class_folders(train_root)
    if not classes:
        raise CompressKitError(
            f"--data {root}: a directory without class folders of images (expected "
            f"{root}/CLASS/IMAGE.png, "
            f"suffixes {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    held = _class_folders(eval_root) if train_root != root and eval_root else {}
    names = sorted(set(classes) | set(held))
    model_labels = preprocessing.label2id if preprocessing is not None else {}
    ids, class_names = label_ids(names, model_labels, where=f"--data {root}")
    if class_names is None:  # folders named 0, 1, ...: the names are the ids
        class_names = tuple(str(i) for i in range(int(ids.max()) + 1))
    by_name = dict(zip(names, ids.tolist(), strict=True))

    def load(folders: dict[str, list[Path]]) -> tuple[torch.Tensor, torch.Tensor]:
        files = [f for files in folders.values() for f in files]
        labels = [by_name[name] for name, files in folders.items() for _ in files]
        return _read(files, preprocessing), torch.tensor(labels, dtype=torch.long)

    x, y = load(classes)
    keyword: dict[str, Any] = {}
    if held:
        keyword["x_eval"], keyword["y_eval"] = load(held)
    bundle = split(x, y, name=root.name, seed=seed, calibration_size=calibration_size, **keyword)
    return replace(bundle, labels=class_names)
