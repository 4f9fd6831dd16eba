"""Conversion chain: ONNX export, simplification, BatchNorm folding, ONNX -> Caffe, ncnn, runtimes, parity."""
