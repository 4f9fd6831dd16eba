"""ImageFolder: one sub-folder per identity holding that identity's aligned face images, the layout CASIA-WebFace
and MS1M are distributed in (after alignment) and that torchvision's ImageFolder reads. Recognition training
(pfpld/data/prepare.py) reads it through read_imagefolder(); the synthetic identity generator writes it.

Classes are the sorted sub-folder names, their index is the label; within a class, images are found as torchvision
finds them (sorted os.walk, so nested folders count, then sorted names). Files other than .jpg, .jpeg, .png and
.bmp (any case) are ignored; unlike torchvision, so are hidden files and folders (".ipynb_checkpoints", macOS
"._x.jpg" forks), which are never identities or faces.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..record import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class ImageFolderSet:
    root: Path
    classes: list[str]                     # sorted sub-folder names; the index is the class label
    items: list[tuple[Path, int]]          # (image path, class index), by class then by file name

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for _, label in self.items:
            counts[label] += 1
        return counts


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def images_under(folder: Path) -> list[Path]:
    """Every image file under `folder` (nested folders too), as ImageFolder finds them: sorted walk, hidden files
    and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in sorted(os.walk(folder, followlinks=True)):
        if any(part.startswith(".") for part in Path(dirpath).relative_to(folder).parts):
            continue
        found += [Path(dirpath) / f for f in sorted(filenames) if is_image_file(Path(f))]
    return found


def read_imagefolder(root: Path) -> ImageFolderSet:
    """Read an ImageFolder layout; one-line DatasetErrors for a missing root, a root without class folders and a
    class folder without images (named)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: ImageFolder root not found (expected one sub-folder of images per identity)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no class folders: an ImageFolder set holds one sub-folder of images per "
                           f"identity")
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        images = images_under(root / name)
        if not images:
            raise DatasetError(f"{root / name}: class folder without images (expected "
                               f"{', '.join(IMAGE_EXTENSIONS)} files)")
        items += [(p, label) for p in images]
    return ImageFolderSet(root=root, classes=classes, items=items)
