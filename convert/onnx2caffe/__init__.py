"""ONNX -> Caffe 1.0 (prototxt + caffemodel) with protobuf only: a caffe.proto subset we wrote, its generated
caffe_pb2, and a registry of one small converter per ONNX op. Sits after fold_bn in the export chain; the NNIE
mapper and OpenCV's Caffe reader consume what it writes."""
from .converter import CaffeConversion, CaffeFiles, convert_onnx_to_caffe, read_caffe
from .registry import OPS

__all__ = ["OPS", "CaffeConversion", "CaffeFiles", "convert_onnx_to_caffe", "read_caffe"]
