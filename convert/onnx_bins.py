"""A user's HopeNet-style ONNX file: three graph outputs of 66 bin logits (yaw, pitch, roll), as the deep-head-pose
code's models export, declared with `pfpld export --onnx FILE --output fc_yaw=yaw_bins --output fc_pitch=pitch_bins
--output fc_roll=roll_bins`. Such a file carries no angles, so nothing downstream could judge it as a pose model.
The declaration appends the decode to the graph, as pfpld's own HopeNet carries it (pfpld/models/hopenet.py): per
angle Softmax over the bins and a MatMul with the bins' values, the three concatenated into one `angles_deg` output
(N, 3) in degrees. Every later stage (Caffe, ncnn, NNIE, int8) then converts and judges the angles like those of a
registry model (pose MAE), and the logits stay outputs.

The values are the bins' LEFT edges (bin index x 3 - 99), the decode of the reference code that such models were
trained and are deployed with (FACTS section 9; pfpld/pose_bins.py explains the 1.5 degree difference to the bin
centres that pfpld's own HopeNet decodes at).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfpld.errors import ConversionError
from pfpld.models.hopenet import DECODES
from pfpld.models.spec import ModelSpec, OutputSpec
from pfpld.pose_bins import NUM_BINS

BIN_KINDS = ("yaw_bins", "pitch_bins", "roll_bins")     # in the order of the decoded output's columns
DECODE = "reference"
DECODED_OUTPUT = "angles_deg"
DECODED_MEANING = (f"yaw, pitch, roll in DEGREES (softmax expectation of the {NUM_BINS} bins of each declared output, "
                   f"decoded at the bins' left edges, bin index x 3 - 99, as the reference code does; appended by "
                   f"pfpld)")


def bin_kind_meaning(kind: str) -> str:
    return f"{kind.split('_')[0]}: {NUM_BINS} bin logits of 3 degrees over [-99, 99) (declared; decoded into " \
           f"{DECODED_OUTPUT})"


def declare_bin_outputs(model: onnx.ModelProto, spec: ModelSpec, kinds: dict[str, str],
                        source: str) -> tuple[onnx.ModelProto, ModelSpec, dict[str, str]]:
    """Handle the *_bins declarations of `kinds` ({output name: kind}): a copy of `model` with the decode appended,
    the spec with those outputs marked pose_bins and the decoded output added, and the declarations left for
    convert.onnx_export.declare_outputs. Without *_bins declarations everything comes back unchanged. One
    ConversionError naming the file and the output for a partial, repeated or impossible declaration."""
    declared = {name: kind for name, kind in kinds.items() if kind in BIN_KINDS}
    rest = {name: kind for name, kind in kinds.items() if kind not in BIN_KINDS}
    if not declared:
        return model, spec, rest
    by_kind = {kind: [n for n, k in declared.items() if k == kind] for kind in BIN_KINDS}
    if any(len(names) != 1 for names in by_kind.values()):
        found = ", ".join(f"{k}: {len(v)}" for k, v in by_kind.items())
        raise ConversionError(f"{source}: --output ...=KIND_bins: declare exactly one output each of "
                              f"{', '.join(BIN_KINDS)} (found {found})")
    outputs = {o.name: o for o in spec.outputs}
    for name, kind in declared.items():
        if name not in outputs:
            raise ConversionError(f"{source}: --output {name}={kind}: the graph has no output {name!r}; its outputs "
                                  f"are {', '.join(outputs)}")
        if tuple(outputs[name].shape) != (NUM_BINS,):
            raise ConversionError(f"{source}: output {name!r} has shape {list(outputs[name].shape)}: {kind} are "
                                  f"{NUM_BINS} bin logits per face ([N, {NUM_BINS}])")
    if DECODED_OUTPUT in outputs:
        raise ConversionError(f"{source}: the graph already has an output {DECODED_OUTPUT!r}; rename it, or declare "
                              f"it --output {DECODED_OUTPUT}=pose_deg instead of the bins")
    decoded = _append_decode(model, [by_kind[kind][0] for kind in BIN_KINDS])
    new_outputs = tuple(dataclasses.replace(o, kind="pose_bins", meaning=bin_kind_meaning(declared[o.name]))
                        if o.name in declared else o for o in spec.outputs)
    new_outputs += (OutputSpec(DECODED_OUTPUT, (3,), DECODED_MEANING, kind="pose_deg"),)
    return decoded, dataclasses.replace(spec, outputs=new_outputs), rest


def _append_decode(model: onnx.ModelProto, logits: list[str]) -> onnx.ModelProto:
    """A copy of the model with Softmax + MatMul per logits output and their Concat as the output DECODED_OUTPUT."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    graph = out.graph
    taken = {n for node in graph.node for n in node.output} | {t.name for t in graph.initializer}
    values = f"pfpld_bin_values_{DECODE}"
    while values in taken:
        values += "_"
    column = np.asarray(DECODES[DECODE], dtype=np.float32).reshape(-1, 1)
    graph.initializer.append(numpy_helper.from_array(column, values))
    expectations = []
    for name in logits:
        soft, expectation = f"pfpld_softmax_{name}", f"pfpld_expectation_{name}"
        # axis 1 of an (N, 66) tensor: the same for every opset's Softmax (before 13 it flattens from the axis on)
        graph.node.append(helper.make_node("Softmax", [name], [soft], name=soft, axis=1))
        graph.node.append(helper.make_node("MatMul", [soft, values], [expectation], name=expectation))
        expectations.append(expectation)
    graph.node.append(helper.make_node("Concat", expectations, [DECODED_OUTPUT], name=DECODED_OUTPUT, axis=1))
    batch = next(o for o in graph.output if o.name == logits[0]).type.tensor_type.shape.dim[0]
    dims = [batch.dim_param if batch.HasField("dim_param") else (batch.dim_value or "N"), 3]
    graph.output.append(helper.make_tensor_value_info(DECODED_OUTPUT, TensorProto.FLOAT, dims))
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"appending the bins' decode made an invalid graph ({str(exc).splitlines()[0]})") \
            from None
    return out
