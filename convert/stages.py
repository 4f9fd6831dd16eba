"""convert's formats, registered in chain order: the PyTorch reference, ONNX, onnxsim, Caffe 1.0 (BatchNorm
merged) and ncnn in fp32 and fp16. Each entry is one export function (job in, files by role out) and one runner
builder; convert/formats.py says what an entry holds, quant/formats.py adds the quantised formats the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx

from pfpld.checkpoint import load_model, save_checkpoint

from .formats import ExportJob, Format, RunOptions, register_format
from .ncnn import convert_onnx_to_ncnn
from .onnx2caffe import convert_onnx_to_caffe
from .onnx_export import export_onnx, load_checked_onnx, save_onnx_atomic, set_metadata, simplify_onnx
from .onnx_graph import opset_version
from .runtimes import CaffeRunner, NcnnRunner, OnnxRunner, TorchRunner

FP32_MAX_ABS = 1e-5           # landmarks in [0,1] of the crop, pose in radians (see convert/parity.py)
FP16_MAX_ABS = 1e-2           # ncnn fp16 (pnnx's own whole-model threshold): 1.1 px at 112 px, 0.57 degrees
# An "embedding" output is compared by cosine, so parity judges it by 1 - cosine(stage, reference) on the worst input
# (convert/parity.py). fp32: 1e-9, a direction off by at most 4.5e-5 of the embedding's length (sqrt(2e-9)).
# Measured on facerec (MobileFaceNet w0.5, random weights): fp32 rounding through onnx, caffe and ncnn 3e-12 to
# 5e-12; one weight of the Caffe files changed by 1 %: 4e-8 (first conv), 7e-8 (a PReLU slope), 3.3e-9 (the global
# depthwise conv), each with a max abs diff of 3e-4 to 2e-3. A cosine of 1 - 1e-6 would pass all three faults.
# fp16: 1e-4 (cosine 0.9999, ONNXToCaffe's whole-model check); ncnn fp16 measured 7.8e-6.
FP32_EMBEDDING_1MCOS = 1e-9
FP16_EMBEDDING_1MCOS = 1e-4
LAYER_REL_FP32 = 1e-4         # an intermediate tensor "diverges" above this x max(1, max |reference|)
LAYER_REL_FP16 = 2e-2


# --- torch: the reference ----------------------------------------------------------------------------------------
def export_torch_reference(job: ExportJob) -> dict[str, Path]:
    """The weights, spec and contract as a slim checkpoint: parity rebuilds the PyTorch reference from it."""
    source = job.source
    path = job.path(".pt")
    save_checkpoint(path, state_dict=source.module.state_dict(), spec=source.spec, contract=source.contract,
                    config={"exported_from": source.record.to_dict()})
    return {"torch": path}


def torch_runner(folder, options: RunOptions):
    module, _ = load_model(folder.require("torch"))
    return TorchRunner(module, folder.spec.output_names, threads=options.threads)


# --- ONNX ---------------------------------------------------------------------------------------------------------
def export_onnx_stage(job: ExportJob) -> dict[str, Path]:
    source = job.source
    path = job.path(".onnx")
    if source.onnx_model is not None:     # a user's ONNX enters the chain: same graph, our metadata added
        model = onnx.ModelProto.FromString(source.onnx_model.SerializeToString())
        set_metadata(model, source.spec, source.contract)
        onnx.checker.check_model(model)
        save_onnx_atomic(model, path)
    else:
        export_onnx(source.module, source.spec, source.contract, path, opset=job.opset)
    job.info["onnx"] = {"opset": opset_version(onnx.load(str(path), load_external_data=False))}
    return {"onnx": path}


def export_simplified(job: ExportJob) -> dict[str, Path]:
    path = job.path(".sim.onnx")
    simplify_onnx(job.files["onnx"], path)
    return {"onnxsim": path}


def onnx_runner(role: str):
    def build(folder, options: RunOptions):
        return OnnxRunner(folder.require(role), threads=options.threads)
    return build


# --- Caffe --------------------------------------------------------------------------------------------------------
def export_caffe(job: ExportJob) -> dict[str, Path]:
    """ONNX -> Caffe 1.0 with BatchNorm merged into the convs (the converter folds and checks that none that could
    be merged remains), plus the name map (ONNX input / outputs / every tensor -> Caffe blob) that parity and
    devices read by."""
    source_file = job.files["onnxsim"]
    prototxt, caffemodel, names = job.path(".prototxt"), job.path(".caffemodel"), job.path(".caffe.names.json")
    conversion = convert_onnx_to_caffe(load_checked_onnx(source_file), prototxt, caffemodel,
                                       source_name=source_file.name)
    layer_types = [t for _, t in conversion.layers]
    job.info["caffe"] = {"layers": len(layer_types), "folded_batchnorms": len(conversion.folded_batchnorms),
                         "batchnorm_layers_left": layer_types.count("BatchNorm"),
                         "layer_types": sorted(set(layer_types))}
    names.write_text(json.dumps({"format": "pfpld-caffe-names", "input": conversion.input_name,
                                 "input_shape": list(conversion.input_shape), "outputs": conversion.outputs,
                                 "blob_map": conversion.blob_map}, indent=1) + "\n")
    return {"caffe.prototxt": prototxt, "caffe.caffemodel": caffemodel, "caffe.names": names}


def caffe_runner(folder, options: RunOptions):
    return CaffeRunner(folder.require("caffe.prototxt"), folder.require("caffe.caffemodel"),
                       folder.require("caffe.names"), threads=options.threads, winograd=options.winograd)


# --- ncnn ---------------------------------------------------------------------------------------------------------
def ncnn_export(name: str, fp16: bool):
    """The export function of the ncnn format `name` (pnnx from the onnxsim file; fp16 weights or fp32)."""
    def export(job: ExportJob) -> dict[str, Path]:
        stem = job.source.stem + (".fp16" if fp16 else "")
        result = convert_onnx_to_ncnn(job.files["onnxsim"], job.folder, stem, fp16=fp16)
        job.info[name] = {"fp16": fp16, "outputs": result.name_map["outputs"],
                          "name_map_same_as_positional_order":
                              result.name_map["verification"]["same_as_positional_order"]}
        return {f"{name}.param": result.param, f"{name}.bin": result.bin, f"{name}.names": result.name_map_path}
    return export


def ncnn_runner(name: str):
    def build(folder, options: RunOptions):
        return NcnnRunner(folder.require(f"{name}.param"), folder.require(f"{name}.bin"),
                          folder.require(f"{name}.names"), threads=options.threads, winograd=options.winograd)
    return build


register_format(Format(
    "torch", "PyTorch", export_torch_reference, roles=("torch",), runner=torch_runner, reference=True,
    selectable=False, runtime="torch"))
register_format(Format(
    "onnx", "ONNX", export_onnx_stage, roles=("onnx",), runner=onnx_runner("onnx"),
    tolerance=FP32_MAX_ABS, cosine_tolerance=FP32_EMBEDDING_1MCOS, layer_tolerance=LAYER_REL_FP32,
    runtime="onnxruntime"))
register_format(Format(
    "onnxsim", "ONNX simplified", export_simplified, roles=("onnxsim",), needs=("onnx",),
    runner=onnx_runner("onnxsim"), tolerance=FP32_MAX_ABS, cosine_tolerance=FP32_EMBEDDING_1MCOS,
    layer_tolerance=LAYER_REL_FP32, runtime="onnxruntime"))
register_format(Format(
    "caffe", "Caffe 1.0", export_caffe, roles=("caffe.prototxt", "caffe.caffemodel", "caffe.names"),
    needs=("onnxsim",), runner=caffe_runner, tolerance=FP32_MAX_ABS, cosine_tolerance=FP32_EMBEDDING_1MCOS,
    layer_tolerance=LAYER_REL_FP32, runtime="OpenCV dnn"))
register_format(Format(
    "ncnn", "ncnn fp32", ncnn_export("ncnn", fp16=False), roles=("ncnn.param", "ncnn.bin", "ncnn.names"),
    needs=("onnxsim",), runner=ncnn_runner("ncnn"), tolerance=FP32_MAX_ABS, cosine_tolerance=FP32_EMBEDDING_1MCOS,
    layer_tolerance=LAYER_REL_FP32, runtime="ncnn", device="ncnn"))
register_format(Format(
    "ncnn-fp16", "ncnn fp16", ncnn_export("ncnn-fp16", fp16=True),
    roles=("ncnn-fp16.param", "ncnn-fp16.bin", "ncnn-fp16.names"), needs=("onnxsim",),
    runner=ncnn_runner("ncnn-fp16"), tolerance=FP16_MAX_ABS, cosine_tolerance=FP16_EMBEDDING_1MCOS,
    layer_tolerance=LAYER_REL_FP16, in_all=False, runtime="ncnn", device="ncnn"))
