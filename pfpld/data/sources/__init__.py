"""Dataset formats on disk -> FaceRecord. One module per format, each with a reader (read_*, iter_*) and a
writer (write_*) that produces the same layout, used by the synthetic generator and the tests.

prepare.py reads these; nothing downstream knows any on-disk format.
"""
from .aflw2000 import iter_aflw2000, read_aflw2000, write_aflw2000
from .lapa import iter_lapa, read_lapa, write_lapa
from .w300lp import iter_300wlp, read_300wlp, write_300wlp
from .wflw import ANNOTATION_FILE, WflwFace, iter_wflw, read_wflw, write_wflw

__all__ = [
    "ANNOTATION_FILE", "WflwFace",
    "iter_aflw2000", "iter_lapa", "iter_300wlp", "iter_wflw",
    "read_aflw2000", "read_lapa", "read_300wlp", "read_wflw",
    "write_aflw2000", "write_lapa", "write_300wlp", "write_wflw",
]
