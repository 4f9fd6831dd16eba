"""boxes.txt: face boxes for a folder of whole images, the way a user hands real photos to the checks
(calibration, parity). One face per line, `file x1 y1 x2 y2` (pixels, the crop rule's box); the file is relative
to the folder holding boxes.txt and may contain spaces; blank lines and `#` comments are skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..fileio import read_text_lines

BOXES_FILE = "boxes.txt"
EXPECTED = "expected 'file x1 y1 x2 y2' (pixels, x1 < x2 and y1 < y2)"


@dataclass(frozen=True)
class BoxLine:
    image: Path                                  # resolved against the folder of boxes.txt
    box: tuple[float, float, float, float]       # x1, y1, x2, y2 in pixels
    line: int                                    # 1-based line number in `source`
    source: Path                                 # the boxes.txt it was read from

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def read_boxes_file(path: Path) -> list[BoxLine]:
    """Every face box of a boxes.txt, in file order. A malformed line, a missing image file or a file without
    any box is an InputError naming the file and line."""
    path = Path(path)
    lines = read_text_lines(path, f"{EXPECTED} per line")
    entries = []
    for number, text in enumerate(lines, start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        fields = text.rsplit(maxsplit=4)        # the file name may contain spaces, the four numbers do not
        box = _parse_box(fields[1:]) if len(fields) == 5 else None
        if box is None:
            raise InputError(f"{path}:{number}: {text.strip()!r}: {EXPECTED}")
        image = path.parent / fields[0]
        if not image.is_file():
            raise InputError(f"{path}:{number}: image {image} not found")
        entries.append(BoxLine(image=image, box=box, line=number, source=path))
    if not entries:
        raise InputError(f"{path}: no face boxes ({EXPECTED} per line)")
    return entries


def _parse_box(fields: list[str]) -> tuple[float, float, float, float] | None:
    try:
        x1, y1, x2, y2 = (float(v) for v in fields)
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or not (x1 < x2 and y1 < y2):
        return None
    return x1, y1, x2, y2
