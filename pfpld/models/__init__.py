"""Model registry: name -> (constructor, spec builder). Every model returns its outputs in spec order."""
from __future__ import annotations

from torch import nn

from ..contract import PreprocessContract
from .pfpld import PFPLD, pfpld_spec
from .spec import ModelSpec, OutputSpec

MODELS = {
    "pfpld": (PFPLD, pfpld_spec),
}


def build_model(name: str = "pfpld", **options) -> tuple[nn.Module, ModelSpec, PreprocessContract]:
    """Create a model with its spec and the preprocessing contract it is trained and deployed with."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    ctor, spec_fn = MODELS[name]
    spec = spec_fn(**options)
    module = ctor(**spec.options)
    contract = PreprocessContract(input_size=spec.input_size)
    return module, spec, contract


def build_from_spec(spec: ModelSpec) -> nn.Module:
    ctor, _ = MODELS[spec.name]
    return ctor(**spec.options)


__all__ = ["MODELS", "ModelSpec", "OutputSpec", "PFPLD", "build_model", "build_from_spec", "pfpld_spec"]
