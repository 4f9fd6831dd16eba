"""Model registry: name -> (constructor, spec builder). Every model returns its outputs in spec order."""
from __future__ import annotations

from torch import nn

from ..contract import PreprocessContract
from ..errors import ModelError
from .pfpld import PFPLD, pfpld_spec
from .spec import ModelSpec, OutputSpec

MODELS = {
    "pfpld": (PFPLD, pfpld_spec),
}


def check_model_name(name: str, where: str = "") -> None:
    """Raise ModelError (naming `where`, e.g. a checkpoint file, when given) unless the registry knows `name`."""
    if name not in MODELS:
        prefix = f"{where}: " if where else ""
        raise ModelError(f"{prefix}unknown model {name!r} (this pfpld knows: {', '.join(sorted(MODELS))})")


def build_model(name: str = "pfpld", **options) -> tuple[nn.Module, ModelSpec, PreprocessContract]:
    """Create a model with its spec and the preprocessing contract it is trained and deployed with."""
    check_model_name(name)
    ctor, spec_fn = MODELS[name]
    spec = spec_fn(**options)
    module = ctor(**spec.options)
    contract = PreprocessContract(input_size=spec.input_size)
    return module, spec, contract


def build_from_spec(spec: ModelSpec) -> nn.Module:
    check_model_name(spec.name)
    ctor, _ = MODELS[spec.name]
    return ctor(**spec.options)


__all__ = ["MODELS", "ModelSpec", "OutputSpec", "PFPLD", "build_model", "build_from_spec", "check_model_name",
           "pfpld_spec"]
