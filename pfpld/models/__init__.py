"""Model registry: name -> ModelEntry (module, spec, contract, task), each defined in the model's own file.
Adding a model is one file and one line here. Every model returns its outputs in spec order."""
from __future__ import annotations

import inspect

from torch import nn

from .. import DEFAULT_MODEL
from ..contract import PreprocessContract
from ..errors import ModelError
from .facerec import FACEREC
from .hopenet import HOPENET
from .landmark5 import LANDMARK5
from .pfpld import PFPLD, PFPLD_ENTRY, pfpld_spec
from .spec import ModelSpec, OutputSpec
from .task import ModelEntry, Task

MODELS: dict[str, ModelEntry] = {
    "pfpld": PFPLD_ENTRY,
    "hopenet": HOPENET,
    "landmark5": LANDMARK5,
    "facerec": FACEREC,
}


def check_model_name(name: str, where: str = "") -> None:
    """Raise ModelError (naming `where`, e.g. a checkpoint file, when given) unless the registry knows `name`."""
    if name not in MODELS:
        prefix = f"{where}: " if where else ""
        raise ModelError(f"{prefix}unknown model {name!r} (this pfpld knows: {', '.join(sorted(MODELS))})")


def check_model_options(name: str, options: dict) -> None:
    """Raise ModelError naming the options `name` does not take and the ones it does."""
    check_model_name(name)
    takes = list(inspect.signature(MODELS[name].spec).parameters)
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise ModelError(f"model {name} takes no option {', '.join(unknown)} (it takes: {', '.join(takes)})")


def build_model(name: str = DEFAULT_MODEL, **options) -> tuple[nn.Module, ModelSpec, PreprocessContract]:
    """Create a model with its spec and the preprocessing contract it is trained and deployed with. Options the
    model does not take are refused in one line."""
    check_model_name(name)
    entry = MODELS[name]
    check_model_options(name, options)
    try:
        spec = entry.spec(**options)
        module = entry.module(**spec.options)
    except (TypeError, ValueError) as e:
        raise ModelError(f"model {name}: {e}") from None
    return module, spec, entry.contract(spec)


def build_from_spec(spec: ModelSpec) -> nn.Module:
    check_model_name(spec.name)
    return MODELS[spec.name].module(**spec.options)


def model_task(spec: ModelSpec) -> Task:
    check_model_name(spec.name)
    return MODELS[spec.name].task(spec)


def model_contract(spec: ModelSpec) -> PreprocessContract:
    check_model_name(spec.name)
    return MODELS[spec.name].contract(spec)


__all__ = ["DEFAULT_MODEL", "MODELS", "ModelEntry", "ModelSpec", "OutputSpec", "PFPLD", "Task", "build_model",
           "build_from_spec", "check_model_name", "check_model_options", "model_contract", "model_task", "pfpld_spec"]
