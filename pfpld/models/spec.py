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
# (judged by its values only); "pose_deg" = yaw, pitch, roll in degrees; "pose_bins" = one angle's bin logits (HopeNet's
# 66 bins of 3 degrees; judged through the model's pose_deg output, which decodes them in the graph); "embedding" = a
# face embedding compared by cosine (judged by the cosine between runtimes and by verification accuracy).
OUTPUT_KINDS = ("landmarks", "pose", "pose_deg", "pose_bins", "embedding", "")
POSE_KINDS = ("pose", "pose_deg")       # outputs a pose can be read from, in radians after pose_radians()
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
    input_size: int                 # rows of the input (and its columns unless input_width)
    outputs: tuple[OutputSpec, ...]
    options: dict = field(default_factory=dict)   # constructor options (width, ...) to rebuild the module
    input_width: int | None = None  # columns of a rectangular input (a user's 112x96 ONNX); None: square

    def __post_init__(self):
        if self.input_width == self.input_size:
            object.__setattr__(self, "input_width", None)

    @property
    def input_hw(self) -> tuple[int, int]:
        """(rows, columns) of the input."""
        return self.input_size, self.input_size if self.input_width is None else self.input_width

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

    def pose_output(self) -> OutputSpec | None:
        """The output the head pose is read from (radians or degrees, see pose_radians), or None."""
        return next((o for o in self.outputs if o.kind in POSE_KINDS), None)

    def decode(self, outputs) -> tuple:
        """A model's outputs in spec order (arrays or tensors, batch first) -> (landmarks (N, K, 2) in [0,1] of the
        crop or None, pose (N, 3) yaw, pitch, roll in radians or None), read by output kind."""
        if len(outputs) != len(self.outputs):
            raise ValueError(f"model {self.name}: {len(outputs)} outputs, its spec names {len(self.outputs)}")
        by_name = dict(zip(self.output_names, outputs))
        landmarks, pose = self.output_of_kind("landmarks"), self.pose_output()
        points = by_name[landmarks.name] if landmarks else None
        return (points.reshape(points.shape[0], -1, 2) if points is not None else None,
                pose_radians(pose, by_name[pose.name]) if pose else None)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["input_width"] is None:       # square: the dict every earlier version wrote
            del d["input_width"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        outputs = tuple(OutputSpec(o["name"], tuple(o["shape"]), o["meaning"],
                                   kind=o.get("kind", LEGACY_KINDS.get(o["name"], "")),
                                   norm_points=(tuple(o["norm_points"]) if o.get("norm_points") is not None else
                                                None))
                        for o in d.pop("outputs"))
        return cls(outputs=outputs, **d)


def pose_radians(output: OutputSpec, values):
    """A pose output's values (..., 3) -> radians (numpy or torch), whatever unit its kind states."""
    if output.kind == "pose_deg":
        return values * (3.141592653589793 / 180.0)
    if output.kind == "pose":
        return values
    raise ValueError(f"output {output.name!r} of kind {output.kind!r} holds no pose")
