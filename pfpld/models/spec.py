"""Model specs: what a network takes and what each of its outputs means.

The conversion chain and the parity checks read the spec (never output positions), so every model of the
family goes through the same chain.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple[int, ...]          # without the batch dimension
    meaning: str


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        outputs = tuple(OutputSpec(o["name"], tuple(o["shape"]), o["meaning"]) for o in d.pop("outputs"))
        return cls(outputs=outputs, **d)
