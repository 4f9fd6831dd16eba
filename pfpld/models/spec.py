"""Model specs: what a network takes and what each of its outputs means.

The conversion chain and the parity checks read the spec (never output positions), so every model of the
family goes through the same chain.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


# What an output holds, so that parity, the int8 check and the benchmark can judge it in the task's own terms
# without knowing the model: "landmarks" = K points x0,y0,x1,y1,... in [0,1] of the crop (NME normalised by the
# distance between points norm_points of the ground truth); "pose" = yaw, pitch, roll in radians; "" = anything else
# (judged by its values only).
OUTPUT_KINDS = ("landmarks", "pose", "")
LEGACY_KINDS = {"landmarks": "landmarks", "pose": "pose"}     # specs saved before kinds existed


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple[int, ...]          # without the batch dimension
    meaning: str
    kind: str = ""                  # one of OUTPUT_KINDS
    norm_points: tuple[int, int] | None = None     # landmarks: the two points whose distance normalises NME

    @property
    def num_points(self) -> int:
        """Landmarks: the number of (x, y) points."""
        size = 1
        for d in self.shape:
            size *= d
        return size // 2


@dataclass(frozen=True)
class ModelSpec:
    name: str                       # registry name, e.g. "pfpld"
    input_name: str
    input_size: int
    outputs: tuple[OutputSpec, ...]
    options: dict = field(default_factory=dict)   # constructor options (width, ...) to rebuild the module

    def output(self, name: str) -> OutputSpec:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(f"model {self.name} has no output {name!r}; it has {[o.name for o in self.outputs]}")

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def output_of_kind(self, kind: str) -> OutputSpec | None:
        """The first output of that kind ("landmarks", "pose"), or None."""
        return next((o for o in self.outputs if o.kind == kind), None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        outputs = tuple(OutputSpec(o["name"], tuple(o["shape"]), o["meaning"],
                                   kind=o.get("kind", LEGACY_KINDS.get(o["name"], "")),
                                   norm_points=(tuple(o["norm_points"]) if o.get("norm_points") is not None else
                                                None))
                        for o in d.pop("outputs"))
        return cls(outputs=outputs, **d)
