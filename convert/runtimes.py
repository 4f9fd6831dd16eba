"""One Runner per backend, all with the same face: `run(x)` takes an NCHW float32 batch and returns the outputs by
the model spec's names; `run_intermediates(x, names)` returns named inner tensors where the backend has names.
Parity (convert/parity.py) and the benchmark drive every stage of an export through these, never by output
position: ONNX and Caffe keep the spec's names, ncnn's in0/out0 are translated by the name map pnnx left us.
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pfpld.errors import ConversionError, one_line


@contextlib.contextmanager
def process_threads(n: int):
    """torch's and OpenCV's thread counts (process-wide settings) at n inside the block, restored after. Setting
    a count it already has is skipped, so a caller that holds the scope around many runs (the benchmark) pays
    nothing per run."""
    import cv2
    import torch
    before = (torch.get_num_threads(), cv2.getNumThreads())
    if before[0] != n:
        torch.set_num_threads(n)
    if before[1] != n:
        cv2.setNumThreads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before[0]:
            torch.set_num_threads(before[0])
        if cv2.getNumThreads() != before[1]:
            cv2.setNumThreads(before[1])


def _images(x: np.ndarray) -> list[np.ndarray]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected an NCHW batch, got shape {x.shape}")
    return [x[i:i + 1] for i in range(x.shape[0])]


def _stack(per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([out[name] for out in per_image], axis=0) for name in per_image[0]}


class Runner:
    """Base of every backend. Subclasses implement `_run_one(x1, names)` for a batch of one image; exported
    graphs have a fixed batch of 1, so batches are run image by image (as on the device)."""
    backend = "?"
    output_names: list[str]
    threads: int = 1
    uses_process_threads = False     # torch and OpenCV take their thread count from process-wide settings

    def _threads(self):
        return process_threads(self.threads) if self.uses_process_threads else contextlib.nullcontext()

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self._threads():
            if x.shape[0] == 1 and x.dtype == np.float32 and x.flags.c_contiguous:   # the latency path: no copies
                return self._run_one(x, self.output_names)
            return _stack([self._run_one(x1, self.output_names) for x1 in _images(x)])

    def run_intermediates(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        if not names:
            return {}
        with self._threads():
            return _stack([self._run_one(x1, list(names)) for x1 in _images(x)])

    def _run_one(self, x1: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class TorchRunner(Runner):
    """The PyTorch module: the reference. Outputs come back in spec order (each model's forward promises that)."""
    backend = "torch"
    uses_process_threads = True

    def __init__(self, module, output_names: list[str], threads: int = 1):
        import torch
        self.torch = torch
        self.module = module.eval()
        self.output_names = list(output_names)
        self.threads = threads

    def _run_one(self, x1, names):
        if set(names) - set(self.output_names):
            raise ValueError("torch runner: intermediates have no ONNX names; compare from the ONNX stage on")
        torch = self.torch
        with torch.inference_mode():
            outputs = self.module(torch.from_numpy(x1))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        if len(outputs) != len(self.output_names):
            raise ConversionError(f"torch model returned {len(outputs)} outputs, its spec names "
                                  f"{len(self.output_names)} ({self.output_names})")
        values = {n: o.detach().numpy().copy() for n, o in zip(self.output_names, outputs)}
        return {n: values[n] for n in names}

    def module_tensors(self, x1: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Every tensor the module's submodules receive and return for one image, in execution order, as
        ('<module path> input' | '<module path> output', value). Torch has no ONNX names: parity matches these
        to ONNX tensors by value. Values are copied when seen (a later in-place ReLU would change them)."""
        torch = self.torch
        seen: list[tuple[str, np.ndarray]] = []

        def keep(label, value):
            if isinstance(value, torch.Tensor):
                seen.append((label, value.detach().numpy().copy()))
            elif isinstance(value, (tuple, list)):
                for item in value:
                    keep(label, item)

        handles = []
        for path, sub in self.module.named_modules():
            if not path:
                continue
            handles.append(sub.register_forward_pre_hook(lambda m, args, path=path: keep(f"{path} input", args)))
            handles.append(sub.register_forward_hook(lambda m, args, out, path=path: keep(f"{path} output", out)))
        try:
            with torch.inference_mode():
                self.module(torch.from_numpy(np.ascontiguousarray(x1, dtype=np.float32)))
        finally:
            for handle in handles:
                handle.remove()
        return seen


class OnnxRunner(Runner):
    """onnxruntime, CPU execution provider, with the default graph optimisations (what users deploy).
    Intermediate tensors are read by adding them as graph outputs in a second session."""
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int = 1, optimize: bool = True):
        import onnxruntime as ort
        self.ort = ort
        self.path = Path(path)
        self.threads = threads
        self.optimize = optimize
        self.session = self._session(None)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._extended: tuple[frozenset, object] | None = None

    def _session(self, model_bytes: bytes | None):
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if not self.optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        source = model_bytes if model_bytes is not None else str(self.path)
        try:
            return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ConversionError(f"{self.path}: onnxruntime cannot load it ({one_line(exc)})") from None

    def tensor_names(self) -> list[str]:
        """Every node output of the graph, in graph (topological) order."""
        import onnx
        model = onnx.load(str(self.path), load_external_data=False)
        return [name for node in model.graph.node for name in node.output if name]

    def _session_with(self, names: list[str]):
        wanted = frozenset(names) - set(self.output_names)
        if not wanted:
            return self.session
        if self._extended is None or not wanted <= self._extended[0]:
            import onnx
            model = onnx.load(str(self.path))
            model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in sorted(wanted))
            self._extended = (wanted, self._session(model.SerializeToString()))
        return self._extended[1]

    def _run_one(self, x1, names):
        session = self._session_with(names)
        return dict(zip(names, session.run(list(names), {self.input_name: x1})))


def _read_json(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict:
    """A name map written by the export, with the keys its runner reads (one clear line when it is not one)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path}: cannot read the {what} ({one_line(exc, 160)})") from None
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise ConversionError(f"{path}: not a {what} (no {', '.join(missing)}; expected the file `pfpld export` "
                              f"wrote)")
    return data


class CaffeRunner(Runner):
    """Caffe files through OpenCV dnn's own Caffe reader (an implementation independent of our converter),
    plain OpenCV backend on the CPU. `names` is the converter's map (ONNX tensor -> Caffe blob); every layer is
    named after its top, which is what net.forward() takes.

    OpenCV's Winograd 3x3 convolution is off by default here: it is an approximation of the file's arithmetic
    (about 1e-5 relative on PFPLD's conv2) and parity checks the file, not OpenCV's shortcuts; pass
    winograd=True to time what an OpenCV user gets by default."""
    backend = "opencv-caffe"
    uses_process_threads = True

    def __init__(self, prototxt: Path, caffemodel: Path, names: dict | Path, threads: int = 1,
                 winograd: bool = False):
        import cv2
        self.cv2 = cv2
        self.prototxt, self.caffemodel = Path(prototxt), Path(caffemodel)
        self.names = names if isinstance(names, dict) else _read_json(names, "Caffe name map", ("input", "outputs"))
        self.threads = threads
        self.winograd = winograd
        self.net = self._net()
        self.input_blob = self.names["input"]
        self.outputs: dict[str, str] = self.names["outputs"]
        self.blob_map: dict[str, str] = self.names.get("blob_map", {})
        self.output_names = list(self.outputs)

    def _net(self):
        cv2 = self.cv2
        try:
            net = cv2.dnn.readNetFromCaffe(str(self.prototxt), str(self.caffemodel))
        except cv2.error as exc:
            raise ConversionError(f"{self.prototxt}: OpenCV cannot read the Caffe files ({one_line(exc)})") from None
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        net.enableWinograd(self.winograd)
        return net

    def blob_of(self, name: str) -> str:
        if name in self.outputs:
            return self.outputs[name]
        if name in self.blob_map:
            return self.blob_map[name]
        raise KeyError(f"no Caffe blob holds ONNX tensor {name!r}")

    def _forward(self, net, x1, names):
        blobs = sorted({self.blob_of(n) for n in names})
        net.setInput(x1, self.input_blob)
        values = dict(zip(blobs, net.forward(blobs)))
        return {n: np.array(values[self.blob_of(n)], dtype=np.float32) for n in names}

    def _run_one(self, x1, names):
        return self._forward(self.net, x1, names)

    def run_intermediates(self, x, names):
        # A fresh net: once OpenCV has run a net for its outputs it has fused layers (a depthwise conv with its
        # ReLU, ...) and asking the same net for an inner blob afterwards returns wrong values.
        if not names:
            return {}
        net = self._net()
        with self._threads():
            return _stack([self._forward(net, x1, list(names)) for x1 in _images(x)])


@dataclass(frozen=True)
class NcnnLayer:
    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: str


def read_ncnn_param(path: Path) -> list[NcnnLayer]:
    """Layers of a .ncnn.param file: magic 7767517, a 'layers blobs' line, then one layer per line
    `type name n_in n_out ins... outs... k=v ...`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read the ncnn param file ({one_line(exc, 120)})") from None
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != ["7767517"]:
        raise ConversionError(f"{path}: not an ncnn param file (expected magic 7767517 on the first line)")
    layers = []
    for number, fields in enumerate(lines[2:], start=3):
        try:
            n_in, n_out = int(fields[2]), int(fields[3])
            ins, outs = fields[4:4 + n_in], fields[4 + n_in:4 + n_in + n_out]
        except (IndexError, ValueError):
            raise ConversionError(f"{path}:{number}: malformed layer line") from None
        layers.append(NcnnLayer(fields[0], fields[1], tuple(ins), tuple(outs), " ".join(fields[4 + n_in + n_out:])))
    return layers


def ncnn_graph_outputs(layers: list[NcnnLayer]) -> list[str]:
    """Blobs nobody reads, in the order they are produced (pnnx numbers them out0, out1, ...)."""
    read = {b for layer in layers for b in layer.bottoms}
    outputs = [t for layer in layers for t in layer.tops if t not in read]
    return sorted(outputs, key=lambda b: (not re.fullmatch(r"out\d+", b), int(b[3:]) if re.fullmatch(r"out\d+", b)
                                          else 0))


class NcnnRunner(Runner):
    """The ncnn runtime (python binding) on .ncnn.param/.bin. For fp32 files every reduced-precision option is
    off (fp16 packed / storage / arithmetic, bf16), otherwise ncnn computes in fp16 where it can and parity is
    lost; fp16 files run with ncnn's defaults, as a device would. One Extractor per image.

    Winograd convolution is off by default, as in CaffeRunner: on PFPLD-0.25 ncnn's Winograd 3x3 alone moves
    the landmarks by 2e-5 (4.6e-6 without it); winograd=True times what an ncnn user gets by default."""
    backend = "ncnn"

    def __init__(self, param: Path, bin_path: Path, names: dict | Path, threads: int = 1,
                 fp16: bool | None = None, winograd: bool = False):
        import ncnn
        self.ncnn = ncnn
        self.param, self.bin = Path(param), Path(bin_path)
        self.names = names if isinstance(names, dict) else _read_json(names, "ncnn name map", ("inputs", "outputs"))
        self.fp16 = bool(self.names.get("fp16", False)) if fp16 is None else fp16
        self.layers = read_ncnn_param(self.param)
        self.threads = threads
        net = ncnn.Net()
        if not self.fp16:
            net.opt.use_fp16_packed = False
            net.opt.use_fp16_storage = False
            net.opt.use_fp16_arithmetic = False
            net.opt.use_bf16_storage = False
            net.opt.use_bf16_packed = False
        net.opt.num_threads = threads
        net.opt.use_vulkan_compute = False
        net.opt.use_winograd_convolution = winograd
        if net.load_param(str(self.param)) != 0:
            raise ConversionError(f"{self.param}: ncnn cannot load the param file")
        if net.load_model(str(self.bin)) != 0:
            raise ConversionError(f"{self.bin}: ncnn cannot load the weights")
        self.net = net
        self.input_blob: str = self.names["inputs"][next(iter(self.names["inputs"]))]
        self.outputs: dict[str, str] = self.names["outputs"]
        self.output_names = list(self.outputs)

    def _run_one(self, x1, names):
        ncnn = self.ncnn
        blobs = [self.outputs.get(n, n) for n in names]     # spec names, or raw ncnn blob names
        values = {}
        with self.net.create_extractor() as extractor:
            # A copy in ncnn's own memory: a Mat that wraps numpy's buffer crashes the process (SIGSEGV, ncnn
            # 1.0.20261020) when the first layer works in place (a graph that starts with Sub / Mul on the input).
            extractor.input(self.input_blob, ncnn.Mat(x1[0]).clone())
            for name, blob in zip(names, blobs):
                status, mat = extractor.extract(blob)
                if status != 0:
                    raise ConversionError(f"{self.param}: ncnn cannot extract blob {blob!r} (status {status})")
                values[name] = np.array(mat, dtype=np.float32)[None]    # ncnn drops the batch axis
        return values

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = super().run(x)
        # ncnn Mats have no batch axis and may squeeze others: give each output the ONNX shape when known.
        shapes = self.names.get("output_shapes", {})
        return {n: v.reshape((v.shape[0],) + tuple(shapes[n])) if n in shapes else v for n, v in out.items()}
