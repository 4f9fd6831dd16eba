"""quant's formats, registered in convert's format registry (convert/formats.py, which knows nothing of them):

- nnie       (`--target nnie --calib DIR [--precision ...]`): the Caffe stage's files renamed for the mapper and
               marked for 16 bit, preflight, activation ranges for the simulation, and the SDK bundle
               (quant/nnie.py), in DIR/nnie_sdk or at --sdk-dir; its runner is the NNIE simulation;
- onnx-int8  (`--int8 --calib DIR` with an ONNX target): onnxruntime QDQ, uint8 activations, per-channel int8
               weights in [-64, 64] so that CPUs without VNNI do not saturate, a conv output only PRelu reads
               kept float (quant/ort_int8.py);
- ncnn-int8  (`--int8 --calib DIR` with the ncnn target): calibration table + int8 param/bin as ncnn2table and
               ncnn2int8 would write them (quant/ncnn_int8.py).

All three are deployed int8 stages: `check-parity --int8` judges them by the accuracy budget (quant/int8.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from convert import stages as _convert_formats  # noqa: F401  (quant's formats need convert's)
from convert.formats import ExportJob, Format, RunOptions, register_format
from convert.parity import random_inputs
from convert.runtimes import CaffeRunner, NcnnRunner, OnnxRunner
from pfpld.errors import ConversionError

from . import nnie as nnie_mod
from .calibration import read_calibration_set
from .nnie_sim import CaffeGraph, NniePlan, NnieSimRunner, calibrate_ranges, hp_layers_of, read_ranges, write_ranges

RENAME_TOLERANCE = 1e-6          # the NNIE files are the Caffe stage's numbers under new names: equal outputs


def _calibration(job: ExportJob):
    calib_set = read_calibration_set(job.options["calib"], job.source.contract)
    return calib_set, calib_set.inputs(job.source.contract)


def export_nnie(job: ExportJob) -> dict[str, Path]:
    opts: nnie_mod.NnieOptions = job.options.get("nnie") or nnie_mod.NnieOptions(calib=job.options["calib"])
    source, contract = job.source, job.source.contract
    stem = source.stem
    task = opts.task or stem
    if opts.sdk_dir is not None:
        sdk = Path(opts.sdk_dir).resolve()
        nnie_mod.check_bundle_target(sdk, opts.force)       # before any work: fail fast
    caffe_names = json.loads(job.files["caffe.names"].read_text())
    net = nnie_mod.make_nnie_net(job.files["caffe.prototxt"], job.files["caffe.caffemodel"], caffe_names,
                                 opts.precision, opts.hp_layers)
    prototxt, caffemodel = job.path(".nnie.prototxt"), job.path(".nnie.caffemodel")
    names_path = job.path(".nnie.names.json")
    prototxt.write_text(net.prototxt_text)
    caffemodel.write_bytes(net.caffemodel)
    blob_map = {onnx: net.blob_names[blob] for onnx, blob in caffe_names.get("blob_map", {}).items()
                if blob in net.blob_names}
    names = {"format": "pfpld-nnie-names", "precision": opts.precision,
             "compile_mode": nnie_mod.PRECISIONS[opts.precision], "input": net.input_blob,
             "input_shape": caffe_names["input_shape"], "outputs": net.outputs, "hp_layers": net.hp_layers,
             "report_layers": net.report_layers, "layers": net.layer_names, "blobs": net.blob_names,
             "blob_map": blob_map}
    names_path.write_text(json.dumps(names, indent=1) + "\n")
    # The documented-but-unproven layers (PReLU, Sigmoid, Softmax) pass; which of them the net uses is recorded.
    nnie_mod.check_preflight(prototxt, caffemodel, list(opts.allow_layers) + list(nnie_mod.NNIE_DOCUMENTED_LAYERS))
    documented = sorted({t for t in nnie_mod.layer_types(prototxt) if t in nnie_mod.NNIE_DOCUMENTED_LAYERS})

    # OpenCV reads the renamed files and gets the Caffe stage's numbers: renaming lost nothing.
    x = random_inputs(contract, 2, seed=0)
    reference = CaffeRunner(job.files["caffe.prototxt"], job.files["caffe.caffemodel"], caffe_names).run(x)
    renamed_runner = CaffeRunner(prototxt, caffemodel, names)
    renamed = renamed_runner.run(x)
    worst = max(float(np.abs(renamed[k] - reference[k]).max()) for k in reference)
    if worst > RENAME_TOLERANCE:
        raise ConversionError(f"{prototxt.name}: OpenCV gives outputs {worst:.3g} away from the Caffe stage's")

    calib_set, xc = _calibration(job)
    graph = CaffeGraph(prototxt, caffemodel)
    ranges = calibrate_ranges(graph, xc)
    ranges_path = job.path(".nnie.ranges.json")
    write_ranges(ranges_path, ranges, len(xc), str(Path(opts.calib).resolve()))
    plan = NniePlan(opts.precision, ranges, hp_layers_of(graph))
    crops = calib_set.crops[:nnie_mod.TEST_INPUTS]
    tests_x = np.stack([contract.to_tensor_layout(c) for c in crops])
    float_out = renamed_runner.run(tests_x)
    # The same crops with the first and third planes traded: what the board prints if fed the wrong plane order.
    swapped_out = renamed_runner.run(np.stack([contract.to_tensor_layout(c[:, :, ::-1]) for c in crops]))
    sim_out = NnieSimRunner(graph, net.outputs, plan).run(tests_x)
    per_test = lambda out: [{k: v[i] for k, v in out.items()} for i in range(len(crops))]  # noqa: E731

    if opts.sdk_dir is not None:
        root = nnie_mod.bundle_tmp_for(sdk)
        force = opts.force
        job.commits.append((root, sdk, lambda built, final: nnie_mod.commit_bundle(built, final, force)))
        where = str(sdk)
    else:
        root = job.folder / "nnie_sdk"
        root.mkdir()
        where = "nnie_sdk"
    manifest = nnie_mod.write_bundle(
        root, task=task, spec=source.spec,
        net_files={"prototxt": prototxt, "caffemodel": caffemodel, "names": names_path}, nnie=net, contract=contract,
        precision=opts.precision, calib_files=calib_set.files, test_crops=crops,
        float_outputs=per_test(float_out), swapped_outputs=per_test(swapped_out), sim_outputs=per_test(sim_out),
        internal_stride=opts.internal_stride, documented_layers=documented,
        source={"export_source": source.record.to_dict(), "calibration": str(Path(opts.calib).resolve())})
    job.info["nnie"] = {"precision": opts.precision, "compile_mode": nnie_mod.PRECISIONS[opts.precision],
                        "hp_layers": net.hp_layers, "task": task, "bundle": where,
                        "bundle_files": len(manifest["files"]), "calibration": str(Path(opts.calib).resolve()),
                        "calibration_images": len(xc), "allowed_extra_layers": list(opts.allow_layers),
                        "documented_layers_used": documented, "report_layers": net.report_layers,
                        "preflight": "pass", "renamed_vs_caffe_max_abs": worst}
    return {"nnie.prototxt": prototxt, "nnie.caffemodel": caffemodel, "nnie.names": names_path,
            "nnie.ranges": ranges_path}


def export_onnx_int8(job: ExportJob) -> dict[str, Path]:
    from .ort_int8 import FLOAT_READERS, quantize_qdq
    activations = job.options.get("int8_activations") or "u8"
    float_readers = () if job.options.get("qdq_prelu") == "int8" else FLOAT_READERS
    _, xc = _calibration(job)
    path = job.path(".int8.onnx")
    recipe = quantize_qdq(job.files["onnxsim"], path, xc, activations=activations, float_readers=float_readers)
    job.info["onnx-int8"] = {**recipe.info(), "calibration": str(Path(job.options["calib"]).resolve())}
    return {"onnx-int8": path}


def export_ncnn_int8(job: ExportJob) -> dict[str, Path]:
    from .ncnn_int8 import make_int8
    contract = job.source.contract
    _, xc = _calibration(job)
    names = json.loads(job.files["ncnn.names"].read_text())
    files = make_int8(job.files["ncnn.param"], job.files["ncnn.bin"], names, xc, job.folder, job.source.stem,
                      pixel=contract.color_order, mean=contract.mean, norm=contract.scale)
    info = json.loads(files["ncnn-int8.names"].read_text())["int8"]
    job.info["ncnn-int8"] = {"calibration": str(Path(job.options["calib"]).resolve()), **info}
    return files


def nnie_runner(folder, options: RunOptions):
    """The NNIE simulation of the mapper's files at the exported precision, with the export's activation ranges."""
    info = folder.info("nnie")
    prototxt, caffemodel = folder.require("nnie.prototxt"), folder.require("nnie.caffemodel")
    names = json.loads(folder.require("nnie.names").read_text())
    graph = CaffeGraph(prototxt, caffemodel)
    plan = NniePlan(info.get("precision", "mixed"), read_ranges(folder.require("nnie.ranges")), hp_layers_of(graph))
    return NnieSimRunner(graph, names["outputs"], plan)


def onnx_int8_runner(folder, options: RunOptions):
    return OnnxRunner(folder.require("onnx-int8"), threads=options.threads)


def ncnn_int8_runner(folder, options: RunOptions):
    return NcnnRunner(folder.require("ncnn-int8.param"), folder.require("ncnn-int8.bin"),
                      folder.require("ncnn-int8.names"), threads=options.threads, winograd=options.winograd)


register_format(Format(
    "nnie", "NNIE (simulated)", export_nnie, roles=("nnie.prototxt", "nnie.caffemodel", "nnie.names", "nnie.ranges"),
    needs=("caffe",), runner=nnie_runner, int8=True, requires=("calib",), in_all=False, timed=False,
    runtime="NNIE simulation"))
register_format(Format(
    "onnx-int8", "ONNX int8 (QDQ)", export_onnx_int8, roles=("onnx-int8",), needs=("onnxsim",),
    runner=onnx_int8_runner, int8=True, requires=("calib",), with_int8_flag=True, in_all=False,
    runtime="onnxruntime"))
register_format(Format(
    "ncnn-int8", "ncnn int8", export_ncnn_int8, roles=("ncnn-int8.param", "ncnn-int8.bin", "ncnn-int8.names",
                                                      "ncnn-int8.table"),
    needs=("ncnn",), runner=ncnn_int8_runner, int8=True, requires=("calib",), with_int8_flag=True, in_all=False,
    runtime="ncnn", device="ncnn"))
