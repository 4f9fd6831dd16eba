#!/bin/sh
# Regenerates caffe_pb2.py from caffe.proto with the protoc bundled in grpcio-tools (a current protoc: a
# caffe_pb2.py made by an old protoc breaks on protobuf >= 4). Run from anywhere:
#   sh convert/onnx2caffe/regenerate_pb2.sh [python]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${1:-"$root/.venv/bin/python"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$here" && "$python" -m grpc_tools.protoc --proto_path=. --python_out="$tmp" caffe.proto)
version=$("$python" -c "import google.protobuf; print(google.protobuf.__version__)")
{
  echo "# Generated code: do not edit. Made from convert/onnx2caffe/caffe.proto by"
  echo "#   sh convert/onnx2caffe/regenerate_pb2.sh"
  echo "# (python -m grpc_tools.protoc, protobuf runtime $version at generation time)."
  cat "$tmp/caffe_pb2.py"
} > "$here/caffe_pb2.py.tmp"
mv "$here/caffe_pb2.py.tmp" "$here/caffe_pb2.py"
echo "wrote $here/caffe_pb2.py"
