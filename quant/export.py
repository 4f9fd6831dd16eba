"""The quantised targets of `pfpld export`, as extra stages of convert.export (which knows nothing of them):

- nnie       (`--target nnie --calib DIR [--precision ...]`): the Caffe stage's files renamed for the mapper and
               marked for 16 bit, preflight, activation ranges for the simulation, and the SDK bundle
               (quant/nnie.py), in DIR/nnie_sdk or at --sdk-dir;
- onnx-int8  (`--int8 --calib DIR` with an onnx target): onnxruntime QDQ, uint8 activations, per-channel int8
               weights (quant/ort_int8.py);
- ncnn-int8  (`--int8 --calib DIR` with the ncnn target): calibration table + int8 param/bin as ncnn2table and
               ncnn2int8 would write them (quant/ncnn_int8.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.export import ExportJob
from convert.parity import random_inputs
from convert.runtimes import CaffeRunner
from pfpld.errors import ConversionError

from . import nnie as nnie_mod
from .calibration import read_calibration_set
from .nnie_sim import CaffeGraph, NniePlan, NnieSimRunner, calibrate_ranges, hp_layers_of, write_ranges

RENAME_TOLERANCE = 1e-6          # the NNIE files are the Caffe stage's numbers under new names: equal outputs


@dataclass
class Int8Options:
    calib: Path
    activations: str = "u8"


def _calibration(job: ExportJob, calib: Path):
    calib_set = read_calibration_set(calib, job.source.contract)
    return calib_set, calib_set.inputs(job.source.contract)


def export_nnie(job: ExportJob) -> dict[str, Path]:
    opts: nnie_mod.NnieOptions = job.options["nnie"]
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
             "layers": net.layer_names, "blobs": net.blob_names, "blob_map": blob_map}
    names_path.write_text(json.dumps(names, indent=1) + "\n")
    nnie_mod.check_preflight(prototxt, caffemodel, opts.allow_layers)

    # OpenCV reads the renamed files and gets the Caffe stage's numbers: renaming lost nothing.
    x = random_inputs(contract, 2, seed=0)
    reference = CaffeRunner(job.files["caffe.prototxt"], job.files["caffe.caffemodel"], caffe_names).run(x)
    renamed_runner = CaffeRunner(prototxt, caffemodel, names)
    renamed = renamed_runner.run(x)
    worst = max(float(np.abs(renamed[k] - reference[k]).max()) for k in reference)
    if worst > RENAME_TOLERANCE:
        raise ConversionError(f"{prototxt.name}: OpenCV gives outputs {worst:.3g} away from the Caffe stage's")

    calib_set, xc = _calibration(job, opts.calib)
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
        root, task=task, net_files={"prototxt": prototxt, "caffemodel": caffemodel, "names": names_path}, nnie=net,
        contract=contract, precision=opts.precision, calib_files=calib_set.files, test_crops=crops,
        float_outputs=per_test(float_out), swapped_outputs=per_test(swapped_out), sim_outputs=per_test(sim_out),
        internal_stride=opts.internal_stride,
        source={"export_source": source.record, "calibration": str(Path(opts.calib).resolve())})
    job.info["nnie"] = {"precision": opts.precision, "compile_mode": nnie_mod.PRECISIONS[opts.precision],
                        "hp_layers": net.hp_layers, "task": task, "bundle": where,
                        "bundle_files": len(manifest["files"]), "calibration": str(Path(opts.calib).resolve()),
                        "calibration_images": len(xc), "allowed_extra_layers": list(opts.allow_layers),
                        "preflight": "pass", "renamed_vs_caffe_max_abs": worst}
    return {"nnie.prototxt": prototxt, "nnie.caffemodel": caffemodel, "nnie.names": names_path,
            "nnie.ranges": ranges_path}


def export_onnx_int8(job: ExportJob) -> dict[str, Path]:
    from .ort_int8 import quantize_qdq
    opts: Int8Options = job.options["int8"]
    _, xc = _calibration(job, opts.calib)
    path = job.path(".int8.onnx")
    quantize_qdq(job.files["onnxsim"], path, xc, activations=opts.activations)
    job.info["onnx-int8"] = {"format": "QDQ", "activations": opts.activations, "weights": "s8 per-channel",
                             "calibration": str(Path(opts.calib).resolve()), "calibration_images": len(xc),
                             "method": "MinMax"}
    return {"onnx-int8": path}


def export_ncnn_int8(job: ExportJob) -> dict[str, Path]:
    from .ncnn_int8 import make_int8
    if job.fp16:
        raise ConversionError("ncnn int8 starts from the fp32 ncnn model: drop --fp16")
    opts: Int8Options = job.options["int8"]
    contract = job.source.contract
    _, xc = _calibration(job, opts.calib)
    names = json.loads(job.files["ncnn.names"].read_text())
    files = make_int8(job.files["ncnn.param"], job.files["ncnn.bin"], names, xc, job.folder, job.source.stem,
                      pixel=contract.color_order, mean=contract.mean, norm=contract.scale)
    info = json.loads(files["ncnn-int8.names"].read_text())["int8"]
    job.info["ncnn-int8"] = {"calibration": str(Path(opts.calib).resolve()), **info}
    return files


def quant_stages(targets: list[str], nnie: nnie_mod.NnieOptions | None,
                 int8: Int8Options | None) -> tuple[list[str], list, dict]:
    """(chain targets, extra stages, their options) for convert.export.export."""
    chain = [t for t in targets if t != "nnie"]
    extra, options = [], {}
    if "nnie" in targets:
        if nnie is None:
            raise ConversionError("--target nnie needs --calib DIR (make one with `pfpld calib`)")
        chain.append("caffe")
        extra.append(("nnie", export_nnie))
        options["nnie"] = nnie
    if int8 is not None:
        wanted = set(chain)
        if not wanted & {"onnx", "ncnn", "all"}:
            raise ConversionError("--int8 applies to the onnx and ncnn targets (the nnie target is quantised by "
                                  "its mapper)")
        extra.append(("onnx-int8", export_onnx_int8))
        if wanted & {"ncnn", "all"}:
            extra.append(("ncnn-int8", export_ncnn_int8))
        options["int8"] = int8
    return sorted(set(chain)) or ["onnx"], extra, options
