"""The NNIE target: the Caffe stage's files made ready for nnie_mapper, checked on the PC before anyone waits hours
for the mapper, and laid out as an SDK sample bundle.

1. Names. ONNX-derived names ('/conv3_1/conv/conv.0/Conv_output_0') become [A-Za-z0-9_] names of at most 31
   characters (the SDK's node names are 32-byte C strings, outputs are read by name on the board), never ending
   in a suffix the mapper gives a meaning (_hp: 16 bit, _cpu: CPU layer, _report: extra output). The map
   original -> NNIE name is kept in <stem>.nnie.names.json.
2. Precision. compile_mode 0 (int8), 1 (int16) or 2 (mixed): under mixed the layers that need 16 bit get the
   `_hp` suffix on their name and top (by default the layers producing the spec's outputs: the landmark and pose
   InnerProducts).
3. Preflight (Caffe 1.0 / NNIE): only the NNIE-proven layer set unless allowed, one Input layer with n = 1, no
   in-place Flatten / Reshape, nothing newer than Caffe 1.0, unique layer names and tops, every bottom produced
   before use, weights present. Each violation is one message naming the layer.
4. Mapper configs from the contract (RGB_order, norm_type, data_scale, mean_file): an instruction variant
   (is_simulation 0, the chip .wk) and a functional-simulation variant (is_simulation 1).
5. The bundle: data/nnie_model/<task>/ (prototxt, caffemodel, cfgs, image_list.txt), data/nnie_image/calib/<task>/
   (calibration crops), data/nnie_image/rgb_planar/<task>_NNN.bgr test inputs with their float and simulated
   outputs, README.md (mapper command, chip / mapper table), manifest.json (sha256 of every file).

Board input layout: planar U8, planes in the cfg's channel order (RGB_order, which is the contract's colour order),
H rows of W bytes each (the contract's input: 112x112, or SphereFace's 112 rows of 96 bytes). RGB_order tells
the mapper how to turn the calibration images it reads (OpenCV: BGR) into the network's order; the compiled .wk
does not reorder what the board feeds it, so the board must feed the network's order. The files keep the SDK's
`.bgr` extension. Community .bgr files are B, G, R planes, which agrees for BGR-trained nets; for an RGB net the
two readings differ, so every test input also carries the float outputs for the swapped plane order: a board
printing those is being fed the wrong order, and says so at once.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.unknown_fields import UnknownFieldSet

from convert.deploy import write_deploy
from convert.export import sha256_of
from convert.onnx2caffe import caffe_pb2
from convert.onnx2caffe.context import from_blob
from pfpld.contract import PreprocessContract
from pfpld.errors import ConversionError, one_line
from pfpld.fileio import check_output_folder, commit_output_folder, temporary_sibling
from pfpld.metrics import nme_per_face
from pfpld.models.spec import ModelSpec, pose_radians

from .nnie_sim import HP_SUFFIX, OUTPUT_FRACTION_BITS, PRECISIONS

BUNDLE_FORMAT = "pfpld-nnie-bundle"
BUNDLE_MANIFEST = "manifest.json"
BUNDLE_KIND = "nnie-bundle"                # its kind of output folder (pfpld.fileio.OUTPUT_KINDS)
NNIE_PROVEN_LAYERS = ("Input", "Convolution", "ReLU", "Eltwise", "Pooling", "Flatten", "Concat", "InnerProduct")
# Caffe 1.0 standard layers that HiSilicon's NNIE documentation lists as supported but that this project has not run
# on a board yet (the 5-point model's PReLU and Sigmoid, HopeNet's in-graph Softmax). `pfpld export --target nnie`
# accepts them and names them in its info and the bundle's README; preflight() alone keeps to the proven set.
NNIE_DOCUMENTED_LAYERS = ("PReLU", "Sigmoid", "Softmax")
REPORT_SUFFIX = "_report"          # on a layer and its top: the mapper also outputs this blob, which later layers read
RESERVED_SUFFIXES = ("_hp", "_cpu", REPORT_SUFFIX)
# Layers that compute nothing a 16-bit marker helps (data movement) or that follow the one that does (activations):
# the default _hp choice walks back through them from an output to the layer that computes it.
PASS_THROUGH_TYPES = {"Flatten", "Reshape", "Concat", "ReLU", "PReLU", "Sigmoid", "Softmax", "Dropout"}
NODE_NAME_MAX = 31                 # SVP_NNIE_NODE_NAME_LEN 32, with the terminating NUL
TEST_INPUTS = 4
# Layer types BVLC Caffe gained after 1.0 (April 2017) and parameter fields it gained with them.
NEWER_THAN_CAFFE_1_0 = {"Clip", "Swish"}
NEWER_FIELDS = {"clip_param", "swish_param", "round_mode"}
# Every LayerParameter field of Caffe 1.0: a field outside our proto subset but in this list is Caffe 1.0,
# only not read by pfpld; anything else is not Caffe 1.0 at all.
CAFFE_1_0_LAYER_FIELDS = {
    "name", "type", "bottom", "top", "phase", "loss_weight", "param", "blobs", "propagate_down", "include",
    "exclude", "transform_param", "loss_param", "accuracy_param", "argmax_param", "batch_norm_param",
    "bias_param", "concat_param", "contrastive_loss_param", "convolution_param", "crop_param", "data_param",
    "dropout_param", "dummy_data_param", "eltwise_param", "elu_param", "embed_param", "exp_param",
    "flatten_param", "hdf5_data_param", "hdf5_output_param", "hinge_loss_param", "image_data_param",
    "infogain_loss_param", "inner_product_param", "input_param", "log_param", "lrn_param", "memory_data_param",
    "mvn_param", "parameter_param", "pooling_param", "power_param", "prelu_param", "python_param",
    "recurrent_param", "reduction_param", "relu_param", "reshape_param", "scale_param", "sigmoid_param",
    "softmax_param", "spp_param", "slice_param", "tanh_param", "threshold_param", "tile_param",
    "window_data_param"}
# Element-wise layers Caffe may run in place (top == bottom); any other layer writing an existing blob clashes.
IN_PLACE_TYPES = {"ReLU", "PReLU", "Sigmoid", "TanH", "Scale", "BatchNorm", "Dropout", "Power", "AbsVal", "ELU",
                  "BNLL", "Threshold", "Exp", "Log", "Bias"}
WEIGHTS_NEEDED = {"Convolution": 1, "Deconvolution": 1, "InnerProduct": 1, "PReLU": 1, "BatchNorm": 3, "Scale": 1}
CHIP_TABLE = [("Hi3516CV500", "NNIE 1.2", "nnie_mapper_12"), ("Hi3516DV300", "NNIE 1.2", "nnie_mapper_12"),
              ("Hi3519AV100", "NNIE 1.2", "nnie_mapper_12")]


# --- 1. names -------------------------------------------------------------------------------------------------------
def nnie_name(original: str, taken: set[str]) -> str:
    """A mapper-safe name for `original`, unique among `taken` (which it joins)."""
    name = re.sub(r"_output_\d+$", "", original)
    name = re.sub(r"[^A-Za-z0-9_]+", "_", name)
    name = re.sub(r"_+", "_", name).strip("_") or "layer"
    if name[0].isdigit():
        name = "n" + name
    if len(name) > NODE_NAME_MAX:
        digest = hashlib.sha1(original.encode()).hexdigest()[:6]
        name = name[:NODE_NAME_MAX - 7].rstrip("_") + "_" + digest
    while name.endswith(RESERVED_SUFFIXES):
        name += "x"
    base, k = name, 2
    while name in taken:
        suffix = f"_{k}"
        name = base[:NODE_NAME_MAX - len(suffix)] + suffix
        k += 1
    taken.add(name)
    return name


def with_suffix(name: str, suffix: str) -> str:
    """name + suffix, the name shortened so that the result stays within NODE_NAME_MAX."""
    return name[:NODE_NAME_MAX - len(suffix)].rstrip("_") + suffix


@dataclass
class NnieNet:
    prototxt_text: str
    caffemodel: bytes
    layer_names: dict[str, str]          # original layer name -> NNIE name
    blob_names: dict[str, str]           # original blob -> NNIE blob
    hp_layers: list[str]                 # NNIE names carrying _hp
    input_blob: str
    outputs: dict[str, str]              # spec output -> NNIE blob
    report_layers: list[str] = field(default_factory=list)    # NNIE names carrying _report


def consumed_blobs(net: caffe_pb2.NetParameter) -> set[str]:
    return {b for layer in net.layer for b in layer.bottom}


def report_layers(net: caffe_pb2.NetParameter, output_blobs: list[str]) -> list[str]:
    """The layers whose top is a network output that later layers also read (HopeNet's bin logits feed its
    Softmax): the mapper outputs such a blob only when it is marked _report."""
    consumed = consumed_blobs(net)
    return [layer.name for layer in net.layer if any(t in output_blobs and t in consumed for t in layer.top)]


def default_hp_layers(net: caffe_pb2.NetParameter, output_blobs: list[str]) -> list[str]:
    """The layers producing the network outputs, and, when such a layer only moves or activates data (Concat,
    Flatten, Sigmoid, ...), the layers it comes from back to the ones that compute it: PFPLD's landmark and pose
    InnerProducts; the 5-point model's Flatten, Sigmoid and last Convolution; HopeNet's angle Concat and the three
    InnerProducts of the softmax expectation. A layer marked _report (report_layers) carries that marker instead:
    one marker suffix per name."""
    producer = {t: layer for layer in net.layer for t in layer.top}
    reported = set(report_layers(net, output_blobs))
    chosen: list[str] = []
    todo = [producer[b] for b in output_blobs if b in producer]
    while todo:
        layer = todo.pop(0)
        if layer.name in chosen or layer.name in reported or layer.type == "Input":
            continue
        chosen.append(layer.name)
        if layer.type in PASS_THROUGH_TYPES:
            todo += [producer[b] for b in layer.bottom if b in producer]
    order = {layer.name: i for i, layer in enumerate(net.layer)}
    return sorted(chosen, key=order.__getitem__)


def make_nnie_net(prototxt: Path, caffemodel: Path, names: dict, precision: str,
                  hp_layers: list[str] | None = None) -> NnieNet:
    """The Caffe stage's net with mapper-safe names and, under `mixed`, `_hp` on the chosen layers (original
    layer names; default: the output layers). Weights are carried over under the new layer names."""
    if precision not in PRECISIONS:
        raise ConversionError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    net = caffe_pb2.NetParameter()
    text_format.Parse(Path(prototxt).read_text(), net)
    weights = caffe_pb2.NetParameter()
    weights.ParseFromString(Path(caffemodel).read_bytes())
    outputs: dict[str, str] = names["outputs"]
    layer_originals = [layer.name for layer in net.layer]
    hp = list(hp_layers) if hp_layers else default_hp_layers(net, list(outputs.values()))
    unknown = [h for h in hp if h not in layer_originals]
    if unknown:
        raise ConversionError(f"--hp-layer {', '.join(unknown)}: no such layer in {prototxt} (layers are named "
                              f"after their top, e.g. {layer_originals[-1]!r})")
    report = report_layers(net, list(outputs.values()))
    both = [h for h in hp if h in report]
    if both and precision == "mixed":
        raise ConversionError(f"--hp-layer {', '.join(both)}: these layers produce outputs that later layers read, "
                              f"so they carry the {REPORT_SUFFIX} marker; a layer name carries one marker")
    if precision != "mixed":
        hp = []
    taken: set[str] = set()
    blob_names: dict[str, str] = {}
    layer_names: dict[str, str] = {}
    # Blobs first (a layer is named after its top, so the two share the name when they were equal).
    for layer in net.layer:
        for top in layer.top:
            if top not in blob_names:
                keep = top if top in outputs.values() and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", top) else None
                new = nnie_name(keep or top, taken) if keep is None or keep in taken else keep
                taken.add(new)
                blob_names[top] = new
    for layer in net.layer:
        if len(layer.top) == 1 and layer.name == layer.top[0]:
            layer_names[layer.name] = blob_names[layer.top[0]]
        else:
            layer_names[layer.name] = nnie_name(layer.name, taken)
    marked: dict[str, list[str]] = {HP_SUFFIX: [], REPORT_SUFFIX: []}
    for suffix, originals in ((HP_SUFFIX, hp), (REPORT_SUFFIX, report)):
        for original in originals:
            layer = next(la for la in net.layer if la.name == original)
            layer_names[original] = with_suffix(layer_names[original], suffix)
            for top in layer.top:
                blob_names[top] = with_suffix(blob_names[top], suffix)
            marked[suffix].append(layer_names[original])
    hp_new = marked[HP_SUFFIX]
    for layer in net.layer:
        layer.bottom[:] = [blob_names[b] for b in layer.bottom]
        layer.top[:] = [blob_names[t] for t in layer.top]
        layer.name = layer_names[layer.name]
    for layer in weights.layer:
        if layer.name in layer_names:
            layer.name = layer_names[layer.name]
        layer.bottom[:] = [blob_names.get(b, b) for b in layer.bottom]
        layer.top[:] = [blob_names.get(t, t) for t in layer.top]
    header = (f"# Caffe 1.0 network for nnie_mapper (compile_mode {PRECISIONS[precision]}, {precision}), written "
              f"by pfpld quant.nnie from {Path(prototxt).name}; names made mapper-safe (map in the names file)"
              + (f"; 16-bit (_hp) layers: {', '.join(hp_new)}" if hp_new else "")
              + (f"; intermediate outputs ({REPORT_SUFFIX}): {', '.join(marked[REPORT_SUFFIX])}"
                 if marked[REPORT_SUFFIX] else "") + "\n")
    return NnieNet(prototxt_text=header + text_format.MessageToString(net), caffemodel=weights.SerializeToString(),
                   layer_names=layer_names, blob_names=blob_names, hp_layers=hp_new,
                   input_blob=blob_names[names["input"]],
                   outputs={spec: blob_names[blob] for spec, blob in outputs.items()},
                   report_layers=marked[REPORT_SUFFIX])


# --- 3. preflight ----------------------------------------------------------------------------------------------------
def _top_level_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line, field name, text) of every top-level field of a prototxt: `layer { ... }` blocks and scalars."""
    blocks, i, n, line = [], 0, len(text), 1
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        if ch == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        start, start_line = i, line
        match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
        if not match:
            raise ConversionError(f"line {line}: cannot read the prototxt here ({text[i:i + 20]!r})")
        name = match.group(0)
        i += len(name)
        while i < n and text[i] in " \t:":
            i += 1
        if i < n and text[i] == "{":
            depth, quote = 0, None
            while i < n:
                c = text[i]
                if c == "\n":
                    line += 1
                if quote:
                    if c == "\\":
                        i += 1
                    elif c == quote:
                        quote = None
                elif c in "\"'":
                    quote = c
                elif c == "#":
                    while i < n and text[i] != "\n":
                        i += 1
                    continue
                elif c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            while i < n and text[i] != "\n":
                i += 1
        blocks.append((start_line, name, text[start:i]))
    return blocks


def _unknown_field(message: str) -> tuple[str, str] | None:
    found = re.search(r'Message type "caffe\.(\w+)" has no field named "(\w+)"', message)
    return (found.group(1), found.group(2)) if found else None


def _field_violation(where: str, owner: str, field_name: str) -> str:
    if field_name in NEWER_FIELDS:
        return f"{where}: {owner}.{field_name} is newer than Caffe 1.0 (the mapper reads Caffe 1.0 files)"
    if owner == "LayerParameter" and field_name in CAFFE_1_0_LAYER_FIELDS:
        return f"{where}: field {field_name} is Caffe 1.0 but outside what pfpld checks; remove it or check it by hand"
    return f"{where}: {owner} has no field {field_name} in Caffe 1.0"


def preflight(prototxt: Path, caffemodel: Path | None = None, allow_layers=()) -> list[str]:
    """Every reason nnie_mapper (Caffe 1.0, the NNIE-proven layer set) would reject or mis-read these files,
    one message per violation, each naming the layer. An empty list means the files pass."""
    prototxt = Path(prototxt)
    allowed = set(NNIE_PROVEN_LAYERS) | set(allow_layers)
    try:
        text = prototxt.read_text()
        blocks = _top_level_blocks(text)
    except (OSError, UnicodeDecodeError, ConversionError) as exc:
        return [f"{prototxt}: cannot read ({one_line(exc)})"]
    violations: list[str] = []
    layers: list[caffe_pb2.LayerParameter] = []
    for line, name, block in blocks:
        if name == "layer":
            layer = caffe_pb2.LayerParameter()
            body = block[block.index("{") + 1:block.rindex("}")]
            try:
                text_format.Parse(body, layer)
            except text_format.ParseError as exc:
                lenient = caffe_pb2.LayerParameter()
                try:
                    text_format.Parse(body, lenient, allow_unknown_field=True)
                except text_format.ParseError:
                    violations.append(f"layer at line {line}: not readable as a Caffe layer ({one_line(exc)})")
                    continue
                where = f"layer '{lenient.name}' ({lenient.type}, line {line})"
                unknown = _unknown_field(str(exc))
                violations.append(_field_violation(where, *unknown) if unknown else f"{where}: {one_line(exc)}")
                layer = lenient
            layers.append(layer)
        elif name == "layers":
            violations.append(f"line {line}: V1 `layers` block (pre-1.0 format); the mapper reads `layer`")
        elif name in ("input", "input_shape", "input_dim"):
            violations.append(f"line {line}: net-level `{name}`; declare the input with an Input layer")
        elif name not in ("name", "force_backward", "state", "debug_info"):
            violations.append(f"line {line}: NetParameter field `{name}` is not Caffe 1.0")

    inputs = [layer for layer in layers if layer.type == "Input"]
    if len(inputs) != 1:
        violations.append(f"{len(inputs)} Input layers ({', '.join(repr(i.name) for i in inputs) or 'none'}): "
                          f"expected exactly one")
    for layer in inputs:
        shapes = list(layer.input_param.shape)
        dims = list(shapes[0].dim) if shapes else []
        if len(shapes) != 1 or len(dims) != 4:
            violations.append(f"layer '{layer.name}' (Input): shape {dims}: expected one 4-D shape (n, c, h, w)")
        elif dims[0] != 1:
            violations.append(f"layer '{layer.name}' (Input): batch n = {dims[0]}: the mapper needs n = 1 (batch "
                              f"is the cfg's batch_num)")
    names: dict[str, str] = {}
    produced: dict[str, str] = {}
    for layer in layers:
        where = f"layer '{layer.name}' ({layer.type})"
        if layer.name in names:
            violations.append(f"{where}: duplicate layer name (also a {names[layer.name]} layer)")
        names[layer.name] = layer.type
        if not re.fullmatch(r"[A-Za-z0-9_]+", layer.name or "?"):
            violations.append(f"{where}: name has characters outside [A-Za-z0-9_]")
        for suffix in ("_cpu", REPORT_SUFFIX):
            if layer.name.endswith(suffix) and not (suffix == REPORT_SUFFIX and _reports_an_intermediate(layer,
                                                                                                        layers)):
                violations.append(f"{where}: name ends in {suffix}, which the mapper reads as a marker")
        if layer.type in NEWER_THAN_CAFFE_1_0:
            violations.append(f"{where}: layer type {layer.type} is newer than Caffe 1.0")
        elif layer.type not in allowed:
            violations.append(f"{where}: not in the NNIE-proven layer set ({', '.join(NNIE_PROVEN_LAYERS)}); "
                              f"pass --allow-layer {layer.type} if your mapper version supports it")
        if layer.type in ("Flatten", "Reshape") and set(layer.top) & set(layer.bottom):
            violations.append(f"{where}: in place (top '{layer.top[0]}' is its bottom); {layer.type} may not run "
                              f"in place")
        for bottom in layer.bottom:
            if bottom not in produced:
                violations.append(f"{where}: bottom '{bottom}' is produced by no earlier layer")
        for top in layer.top:
            in_place = top in layer.bottom
            if in_place and layer.type in ("Flatten", "Reshape"):
                continue                               # reported above
            if top in produced and not (in_place and layer.type in IN_PLACE_TYPES):
                violations.append(f"{where}: top '{top}' is also written by layer '{produced[top]}'")
            produced.setdefault(top, layer.name)
        if layer.type == "Pooling" and layer.pooling_param.global_pooling:
            violations.append(f"{where}: global_pooling; give the kernel explicitly (the NNIE-proven form)")
        if layer.type == "Eltwise" and layer.eltwise_param.operation != caffe_pb2.EltwiseParameter.SUM:
            violations.append(f"{where}: only Eltwise SUM is NNIE-proven")
    consumed = {b for layer in layers for b in layer.bottom}
    for layer in layers:
        for top in layer.top:
            is_io = layer.type == "Input" or top not in consumed or top.endswith(REPORT_SUFFIX)
            if is_io and len(top) > NODE_NAME_MAX:
                violations.append(f"layer '{layer.name}' ({layer.type}): blob '{top}' is a network input/output "
                                  f"and longer than {NODE_NAME_MAX} characters (the board reads it by name)")
    if caffemodel is not None:
        violations += _caffemodel_violations(Path(caffemodel), layers)
    return violations


def _reports_an_intermediate(layer: caffe_pb2.LayerParameter, layers: list[caffe_pb2.LayerParameter]) -> bool:
    """A deliberate _report: the layer's tops carry the marker too and a later layer reads one of them."""
    return (all(t.endswith(REPORT_SUFFIX) for t in layer.top)
            and any(t in other.bottom for other in layers for t in layer.top))


def _caffemodel_violations(caffemodel: Path, layers: list[caffe_pb2.LayerParameter]) -> list[str]:
    weights = caffe_pb2.NetParameter()
    try:
        weights.ParseFromString(caffemodel.read_bytes())
    except Exception as exc:
        return [f"{caffemodel}: not a caffemodel ({one_line(exc)})"]
    out = []
    if 2 in {f.field_number for f in UnknownFieldSet(weights)}:
        out.append(f"{caffemodel}: V1 `layers` weights (pre-1.0 format)")
    blobs = {layer.name: layer.blobs for layer in weights.layer}
    for layer in weights.layer:
        unknown = sorted({f.field_number for f in UnknownFieldSet(layer)})
        if unknown:
            out.append(f"layer '{layer.name}' in {caffemodel.name}: fields {unknown} are outside Caffe 1.0")
    for layer in layers:
        needed = WEIGHTS_NEEDED.get(layer.type, 0)
        if needed and len(blobs.get(layer.name, [])) < needed:
            out.append(f"layer '{layer.name}' ({layer.type}): no weights under this name in {caffemodel.name}")
        elif needed and layer.type == "Convolution":
            shape = from_blob(blobs[layer.name][0]).shape
            if shape[0] != layer.convolution_param.num_output:
                out.append(f"layer '{layer.name}' (Convolution): weight shape {shape} does not match num_output "
                           f"{layer.convolution_param.num_output}")
    return out


def layer_types(prototxt: Path) -> list[str]:
    """The type of every layer of a prototxt, in order."""
    net = caffe_pb2.NetParameter()
    text_format.Parse(Path(prototxt).read_text(), net)
    return [layer.type for layer in net.layer]


def check_preflight(prototxt: Path, caffemodel: Path | None = None, allow_layers=()) -> None:
    violations = preflight(prototxt, caffemodel, allow_layers)
    if violations:
        raise ConversionError(f"NNIE preflight of {Path(prototxt).name}: {len(violations)} violation"
                              f"{'s' if len(violations) > 1 else ''}: " + "; ".join(summarise_violations(violations)))


def summarise_violations(violations: list[str]) -> list[str]:
    """The layers outside the proven set grouped by type (a ResNet has dozens of each), with one --allow-layer hint
    for all of them; every other violation as it is."""
    unproven: dict[str, list[str]] = {}
    rest = []
    for v in violations:
        match = re.fullmatch(r"layer '(.*)' \((\w+)\): not in the NNIE-proven layer set .*", v)
        if match:
            unproven.setdefault(match.group(2), []).append(match.group(1))
        else:
            rest.append(v)
    if not unproven:
        return rest
    listed = ", ".join(f"{kind} x{len(names)} ('{names[0]}'{', ...' if len(names) > 1 else ''})"
                       for kind, names in unproven.items())
    allow = " ".join(f"--allow-layer {kind}" for kind in unproven)
    return [f"layers {listed} are not in the NNIE-proven layer set ({', '.join(NNIE_PROVEN_LAYERS)}); pass {allow} "
            f"if your mapper version supports them"] + rest


# --- 4. mapper configs ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Normalisation:
    norm_type: int
    data_scale: float | None
    mean: tuple[float, ...] | None          # channel means, network channel order, when norm_type is 2 or 5


def normalisation_of(contract: PreprocessContract) -> Normalisation:
    """The mapper's (x - mean) * data_scale from the contract's (pixel - mean) * scale."""
    has_mean = any(m != 0 for m in contract.mean)
    has_scale = contract.scale != 1.0
    if has_mean:
        return Normalisation(5 if has_scale else 2, contract.scale if has_scale else None, tuple(contract.mean))
    return Normalisation(3 if has_scale else 0, contract.scale if has_scale else None, None)


@dataclass(frozen=True)
class MapperConfig:
    prototxt_file: str
    caffemodel_file: str
    instruction_name: str
    image_list: str
    compile_mode: int
    is_simulation: int
    rgb_order: str
    norm: Normalisation
    mean_file: str = "null"
    batch_num: int = 1
    internal_stride: int = 16
    log_level: int = 0

    def text(self) -> str:
        rows = [("prototxt_file", self.prototxt_file), ("caffemodel_file", self.caffemodel_file),
                ("batch_num", self.batch_num), ("net_type", 0), ("sparse_rate", 0),
                ("compile_mode", self.compile_mode), ("is_simulation", self.is_simulation),
                ("log_level", self.log_level), ("instruction_name", self.instruction_name),
                ("RGB_order", self.rgb_order)]
        if self.norm.data_scale is not None:
            rows.append(("data_scale", f"{self.norm.data_scale:.10g}"))
        rows += [("internal_stride", self.internal_stride), ("image_list", self.image_list), ("image_type", 1),
                 ("mean_file", self.mean_file), ("norm_type", self.norm.norm_type)]
        return "".join(f"[{k}] {v}\n" for k, v in rows)


def mapper_configs(task: str, contract: PreprocessContract, precision: str, internal_stride: int = 16,
                   image_list: str = "./image_list.txt") -> dict[str, str]:
    """{file name: text} of the inst (chip .wk) and func (PC simulation) cfgs, paths relative to the model
    folder the mapper runs in (plus mean.txt when the contract subtracts a mean)."""
    if internal_stride not in (16, 32):
        raise ConversionError(f"--internal-stride {internal_stride}: expected 16 (DDR3) or 32 (DDR4)")
    norm = normalisation_of(contract)
    files = {}
    mean_file = "null"
    if norm.mean is not None:
        mean_file = "./mean.txt"
        files["mean.txt"] = "".join(f"{m:.6f}\n" for m in norm.mean)
    for variant, simulation in (("inst", 0), ("func", 1)):
        files[f"{task}_{variant}.cfg"] = MapperConfig(
            prototxt_file=f"./{task}.prototxt", caffemodel_file=f"./{task}.caffemodel",
            instruction_name=f"./{task}_{variant}", image_list=image_list, compile_mode=PRECISIONS[precision],
            is_simulation=simulation, rgb_order=contract.color_order, norm=norm, mean_file=mean_file,
            internal_stride=internal_stride).text()
    return files


def parse_cfg(text: str) -> dict[str, str]:
    """A mapper cfg as {key: value} (one `[key] value` a line)."""
    out = {}
    for line in text.splitlines():
        found = re.match(r"\s*\[(\w+)\]\s*(.*?)\s*$", line)
        if found:
            out[found.group(1)] = found.group(2)
    return out


# --- 5. the bundle ---------------------------------------------------------------------------------------------------
def board_plane_order(contract: PreprocessContract) -> str:
    """The order of the U8 planes the board feeds: the cfg's RGB_order, i.e. the network's own colour order."""
    return contract.color_order


def board_row_stride(width: int, align: int = 16) -> int:
    """Bytes per row of a U8 input plane in the board's blob: the row rounded up to `align` (the SDK samples' 16;
    deploy_cpp's aligned_stride)."""
    return -(-width // align) * align


def planar_bytes(crop_bgr: np.ndarray, plane_order: str) -> bytes:
    """A BGR uint8 HxWx3 crop as planar U8 bytes in `plane_order` ("BGR" or "RGB"): all of plane 0 (row by row),
    then 1, then 2."""
    crop = np.ascontiguousarray(crop_bgr, dtype=np.uint8)
    if crop.ndim != 3 or crop.shape[2] != 3:
        raise ConversionError(f"expected an HxWx3 crop, got {crop.shape}")
    if plane_order not in ("BGR", "RGB"):
        raise ConversionError(f"plane order must be BGR or RGB, got {plane_order!r}")
    planes = crop if plane_order == "BGR" else crop[:, :, ::-1]
    return np.ascontiguousarray(planes.transpose(2, 0, 1)).tobytes()


def check_bundle_target(path: Path, force: bool) -> None:
    """A bundle may be created, fill an empty folder, or (with force) replace a previous bundle; nothing else
    (the rule of every pfpld output folder: pfpld.fileio.check_output_folder)."""
    check_output_folder(Path(path), BUNDLE_KIND, force)


def readme_text(task: str, precision: str, contract: PreprocessContract, cfg: dict[str, str], hp_layers: list[str],
                outputs: dict[str, str], n_calib: int, tests: list[str], input_blob: str, planes: str,
                spec: ModelSpec | None = None, report: list[str] = (), documented: list[str] = ()) -> str:
    inst = parse_cfg(cfg[f"{task}_inst.cfg"])
    chips = "\n".join(f"| {chip} | {nnie} | `{tool}` |" for chip, nnie, tool in CHIP_TABLE)
    kinds = {o.name: o.kind for o in spec.outputs} if spec is not None else {}
    outs = "\n".join(f"| `{name}` | {kinds.get(name) or '-'} | `{blob}` |" for name, blob in outputs.items())
    swapped_key = swapped_planes_key(spec) if spec is not None else None
    swapped_note = f"; `{swapped_key}` in the JSON says how far apart the two are" if swapped_key else ""
    extra = []
    if report:
        extra.append(f"- Intermediate outputs ({REPORT_SUFFIX}): {', '.join(report)}: later layers read these blobs, "
                     f"so the mapper outputs them only with this marker.")
    if documented:
        extra.append(f"- Layers outside the set proven on a board by pfpld (but listed as supported in HiSilicon's "
                     f"NNIE documentation): {', '.join(documented)}. Check the mapper log for them first.")
    return f"""# NNIE bundle: {task}

Written by `pfpld export --target nnie` ({precision}, compile_mode {inst['compile_mode']}). Lay it over an SDK
sample tree (data/ next to the sample binary) or use it as it is.

## Make the .wk

```sh
cd data/nnie_model/{task}
nnie_mapper_12 {task}_inst.cfg      # chip instructions: {task}_inst.wk
nnie_mapper_12 {task}_func.cfg      # PC functional simulation: {task}_func.wk
```

Run the mapper from `data/nnie_model/{task}/`: every path in the cfgs and in `image_list.txt` is relative to
it. The mapper must match the SDK the .wk runs on (a .wk from mapper 1.1 fails on SDK 1.2):

| chip | NNIE | mapper |
|---|---|---|
{chips}

For another chip use the mapper its SDK ships.

## What the cfgs say (from the model's preprocessing contract)

- `[RGB_order] {inst['RGB_order']}`, `[norm_type] {inst['norm_type']}`, `[data_scale] {inst.get('data_scale', '-')}`,
  `[mean_file] {inst['mean_file']}`: the network computes (pixel - mean) x scale with mean {list(contract.mean)}
  and scale {contract.scale:.10g}, channels in {contract.color_order} order.
- `[batch_num] 1` (single image), `[internal_stride] {inst['internal_stride']}` (16 for DDR3, 32 for DDR4),
  `[image_type] 1` (U8 image).
- `[image_list] {inst['image_list']}`: {n_calib} calibration crops in `data/nnie_image/calib/{task}/`, cut with
  the contract's crop rule at {contract.size_text} (rows x columns), PNG in normal colour order (the mapper
  reads BGR and applies RGB_order).
- Precision: {precision}; 16-bit (`_hp`) layers: {', '.join(hp_layers) or 'none'}.
{chr(10).join(extra)}

## On the board

Input `{input_blob}`: a U8 planar image, **{', '.join(planes)} planes** (the cfg's `RGB_order`: the .wk does not
reorder what it is fed), each plane {contract.height} rows of {contract.width} bytes filled row by row at
the blob's row stride ({board_row_stride(contract.width)} bytes: the row rounded up to 16). Read the outputs by
node name, never by index; they are S32 fixed point, value = s32 / 4096:

| output | kind | node name |
|---|---|---|
{outs}

`data/nnie_image/rgb_planar/` holds {len(tests)} test inputs ({', '.join(tests)}),
3x{contract.size_text} = {3 * contract.height * contract.width} bytes each (unpadded rows), with a JSON next to each:
the float outputs (Caffe files through OpenCV), the NNIE simulation's outputs (what the board should print, to
its precision), and `float_outputs_if_planes_swapped`: what the net gives when the first and third planes trade
places. If the board prints something close to those instead, the build feeds the colour planes in the wrong
order (the classic silent mismatch of RGB-trained nets on NNIE){swapped_note}.

`manifest.json` lists every file with its sha256.
"""


def nnie_entry(inst_cfg: str, input_blob: str, planes: str, outputs: dict[str, str]) -> dict:
    """deploy.json's entry for the board (deploy_cpp's NNIE backend): the .wk the mapper writes from the inst cfg
    (its instruction_name), the planar U8 input in the cfg's RGB_order, and the report blob of every spec output
    (S32 with OUTPUT_FRACTION_BITS fractional bits)."""
    wk = Path(parse_cfg(inst_cfg)["instruction_name"]).name + ".wk"
    return {"backend": "nnie", "wk": wk, "input": input_blob, "planes": list(planes), "outputs": dict(outputs),
            "s32_scale": 1 << OUTPUT_FRACTION_BITS}


def swapped_planes_key(spec: ModelSpec) -> str | None:
    """The test JSON's measure of how far the swapped-planes outputs are from the right ones: landmark NME for a model
    with landmarks, the largest pose difference in degrees for a pose model, the embedding cosine for a recognition
    model (what it is compared by: far below 1 when the board is fed the wrong plane order)."""
    landmarks = spec.output_of_kind("landmarks")
    if landmarks is not None and landmarks.norm_points is not None:
        return "swapped_planes_nme"
    if spec.pose_output() is not None:
        return "swapped_planes_pose_deg"
    return "swapped_planes_embedding_cosine" if spec.output_of_kind("embedding") is not None else None


def swapped_planes_distance(spec: ModelSpec, ref: dict, swapped: dict) -> dict:
    key = swapped_planes_key(spec)
    if key == "swapped_planes_nme":
        landmarks = spec.output_of_kind("landmarks")
        value = nme_per_face(np.reshape(swapped[landmarks.name], (1, -1, 2)), np.reshape(ref[landmarks.name],
                                                                                        (1, -1, 2)),
                             norm_points=landmarks.norm_points)[0]
    elif key == "swapped_planes_pose_deg":
        pose = spec.pose_output()
        value = np.degrees(np.abs(pose_radians(pose, np.asarray(swapped[pose.name], dtype=np.float64))
                                  - pose_radians(pose, np.asarray(ref[pose.name], dtype=np.float64))).max())
    elif key == "swapped_planes_embedding_cosine":
        from convert.parity import one_minus_cosine
        embedding = spec.output_of_kind("embedding")
        value = 1.0 - one_minus_cosine(np.reshape(ref[embedding.name], (1, -1)),
                                       np.reshape(swapped[embedding.name], (1, -1)))[0]
    else:
        return {}
    return {key: round(float(value), 6)}


def write_bundle(root: Path, *, task: str, spec: ModelSpec, net_files: dict[str, Path], nnie: NnieNet,
                 contract: PreprocessContract, precision: str, calib_files: list[Path], test_crops: list[np.ndarray],
                 float_outputs: list[dict], swapped_outputs: list[dict], sim_outputs: list[dict], internal_stride: int,
                 source: dict, documented_layers: list[str] = ()) -> dict:
    """Write the bundle into the (new, empty) folder root; returns its manifest."""
    model_dir = root / "data" / "nnie_model" / task
    calib_dir = root / "data" / "nnie_image" / "calib" / task
    planar_dir = root / "data" / "nnie_image" / "rgb_planar"
    for d in (model_dir, calib_dir, planar_dir):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(net_files["prototxt"], model_dir / f"{task}.prototxt")
    shutil.copyfile(net_files["caffemodel"], model_dir / f"{task}.caffemodel")
    shutil.copyfile(net_files["names"], model_dir / f"{task}.names.json")
    listed = []
    for i, src in enumerate(calib_files):
        name = f"{i:03d}{src.suffix.lower()}"
        shutil.copyfile(src, calib_dir / name)
        listed.append(f"../../nnie_image/calib/{task}/{name}")
    (model_dir / "image_list.txt").write_text("\n".join(listed) + "\n")
    cfgs = mapper_configs(task, contract, precision, internal_stride)
    for name, text in cfgs.items():
        (model_dir / name).write_text(text)
    planes = board_plane_order(contract)
    flat = lambda out: {k: np.asarray(v).reshape(-1).round(7).tolist() for k, v in out.items()}  # noqa: E731
    tests = []
    for i, (crop, ref, swapped, sim) in enumerate(zip(test_crops, float_outputs, swapped_outputs, sim_outputs)):
        stem = f"{task}_{i:03d}"
        (planar_dir / f"{stem}.bgr").write_bytes(planar_bytes(crop, planes))
        record = {"input": f"{stem}.bgr", "layout": f"planar U8, planes {', '.join(planes)}, "
                                                    f"{contract.height} rows x {contract.width} columns each",
                  "bytes": 3 * contract.height * contract.width,
                  "board_row_stride_bytes": board_row_stride(contract.width), "float_outputs": flat(ref),
                  f"nnie_sim_{precision}_outputs": flat(sim), "float_outputs_if_planes_swapped": flat(swapped),
                  "output_nodes": nnie.outputs}
        record.update(swapped_planes_distance(spec, ref, swapped))
        (planar_dir / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
        tests.append(f"{stem}.bgr")
    write_deploy(model_dir, spec, contract,
                 {"nnie": nnie_entry(cfgs[f"{task}_inst.cfg"], nnie.input_blob, planes, nnie.outputs)})
    (root / "README.md").write_text(readme_text(task, precision, contract, cfgs, nnie.hp_layers, nnie.outputs,
                                                len(calib_files), tests, nnie.input_blob, planes, spec=spec,
                                                report=nnie.report_layers, documented=list(documented_layers)))
    files = {str(p.relative_to(root)): {"sha256": sha256_of(p), "size": p.stat().st_size}
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != BUNDLE_MANIFEST}
    manifest = {"format": BUNDLE_FORMAT, "version": 1,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "task": task,
                "precision": precision, "compile_mode": PRECISIONS[precision], "hp_layers": nnie.hp_layers,
                "report_layers": nnie.report_layers, "documented_layers": list(documented_layers),
                "contract": contract.to_dict(), "board_input": {"blob": nnie.input_blob, "planes": planes},
                "outputs": nnie.outputs, "mapper": {"run_in": f"data/nnie_model/{task}",
                                                    "commands": [f"nnie_mapper_12 {task}_inst.cfg",
                                                                 f"nnie_mapper_12 {task}_func.cfg"]},
                "chips": [{"chip": c, "nnie": v, "mapper": t} for c, v, t in CHIP_TABLE],
                "source": source, "files": files}
    (root / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def bundle_tmp_for(target: Path) -> Path:
    return temporary_sibling(Path(target))


def commit_bundle(tmp: Path, target: Path, force: bool) -> None:
    commit_output_folder(tmp, Path(target), BUNDLE_KIND, force)


@dataclass
class NnieOptions:
    """What `pfpld export --target nnie` passes to the nnie stage."""
    calib: Path
    precision: str = "mixed"
    hp_layers: list[str] = field(default_factory=list)
    allow_layers: list[str] = field(default_factory=list)
    sdk_dir: Path | None = None
    force: bool = False
    internal_stride: int = 16
    task: str | None = None
