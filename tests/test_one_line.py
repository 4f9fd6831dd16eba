"""pfpld.errors.one_line on the messages the libraries really raise: the essential part, on one line, without
their internals (status codes, C++ source locations, "Please file an issue ...")."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from pfpld.errors import one_line


class NotAWeight:
    pass


def raised(fn) -> BaseException:
    with pytest.raises(BaseException) as info:
        fn()
    return info.value


def relu_model(output: str = "y", ir_version: int = 8) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ir_version
    return model


def assert_clean(text: str) -> None:
    assert "\n" not in text and "  " not in text
    for internal in ("[ONNXRuntimeError]", "Please file an issue", "onnxruntime_src", ".cc:", "Please fix either",
                     "Check the documentation", "\x1b["):
        assert internal not in text, (internal, text)


def test_onnxruntime_garbage_file(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    exc = raised(lambda: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    assert "[ONNXRuntimeError]" in str(exc)
    text = one_line(exc)
    assert_clean(text)
    assert "Protobuf parsing failed" in text and "garbage.onnx" in text


def test_onnxruntime_invalid_model_drops_the_cpp_location(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(relu_model(output="z").SerializeToString())
    exc = raised(lambda: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    text = one_line(exc)
    assert_clean(text)
    assert "Graph output (z) does not exist in the graph" in text


def test_onnxruntime_wrong_input_keeps_the_dimensions_drops_the_advice():
    session = ort.InferenceSession(relu_model().SerializeToString(), providers=["CPUExecutionProvider"])
    exc = raised(lambda: session.run(None, {"x": np.zeros(3, np.float32)}))
    assert "Please fix either" in str(exc)
    text = one_line(exc)
    assert_clean(text)
    assert "invalid dimensions for input: x" in text and "Got: 3 Expected: 2" in text


def test_torch_weights_only_errors_keep_the_unpickler_line(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip at all" * 10)
    text = one_line(raised(lambda: torch.load(junk, weights_only=True)))
    assert_clean(text)
    assert text.startswith("WeightsUnpickler error:") and "Unsupported operand" in text
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"kind": NotAWeight()}, unsafe)
    text = one_line(raised(lambda: torch.load(unsafe, weights_only=True)))
    assert_clean(text)
    assert text.startswith("WeightsUnpickler error: Unsupported global") and "add_safe_globals" not in text


def test_onnx_decode_error_is_kept_whole(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\xff" * 64)
    exc = raised(lambda: onnx.load_model(str(path)))
    assert one_line(exc) == " ".join(str(exc).split())


def test_key_error_unquoted_empty_message_gives_the_type_and_long_text_is_cut():
    assert one_line(KeyError("no tensor 'x'")) == "no tensor 'x'"
    assert one_line(ValueError()) == "ValueError"
    assert one_line(RuntimeError("  \n ")) == "RuntimeError"
    text = one_line(ValueError("word\n" * 100), limit=40)
    assert len(text) == 40 and text.endswith("...") and "\n" not in text
    assert one_line(ValueError("first\n\n  second"), limit=40) == "first second"
