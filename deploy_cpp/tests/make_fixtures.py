"""Write the fixtures of deploy_cpp's tests with the Python side, at test time (nothing is committed).

    python deploy_cpp/tests/make_fixtures.py --out BUILD/fixtures [--model pfpld]

Everything the C++ tests compare with comes from the same Python code users run: images written by OpenCV
(PPM, PGM, BMP), cv2.warpAffine on random and contract matrices, PreprocessContract's crop matrices, crops and
network inputs, the NNIE bundle's planar packing, S32 blobs with padded strides, and a model checkpoint exported by
`pfpld export --target ncnn`, Python ncnn's outputs on the recorded inputs, their decoding by the contract, and
`pfpld predict --json` on the same images and boxes. index.json lists it all.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from convert.deploy import DEPLOY_FILE
from convert.export import source_from_random_init
from convert.runtimes import NcnnRunner
from pfpld.checkpoint import save_checkpoint
from pfpld.contract import landmark_box
from pfpld.data.synthetic import render_face
from quant.nnie import board_plane_order, planar_bytes
from quant.nnie_sim import OUTPUT_FRACTION_BITS

ALIGNS = (1, 16, 32)                 # planar U8 row alignments: none, NNIE's 16 bytes, 32 bytes
FACES = 6
PREDICT_CLI = (0, 5)                 # faces also run through `pfpld predict --json` (a CLI start each: keep few)


def write_raw(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.ascontiguousarray(array).tobytes())
    return str(path)


def image_fixtures(out: Path, rng: np.random.Generator) -> list[dict]:
    """Images written by OpenCV in every format the C++ core reads, with what cv2.imread gives back."""
    records = []
    colour = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)       # odd sizes: BMP rows need padding
    grey = rng.integers(0, 256, (29, 31), dtype=np.uint8)
    for name, image in (("colour.ppm", colour), ("colour.bmp", colour), ("grey.pgm", grey), ("grey.bmp", grey)):
        path = out / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
        back = cv2.imread(str(path), cv2.IMREAD_COLOR)
        records.append({"file": str(path), "bgr": write_raw(path.with_suffix(path.suffix + ".bgr"), back),
                        "width": int(back.shape[1]), "height": int(back.shape[0])})
    ascii_path = out / "images" / "ascii.ppm"                          # P3, with a comment, as some tools write
    rgb = colour[:4, :5, ::-1]
    ascii_path.write_text("P3\n# written by make_fixtures.py\n5 4\n255\n" +
                          "\n".join(" ".join(str(v) for v in row.reshape(-1)) for row in rgb) + "\n")
    records.append({"file": str(ascii_path), "bgr": write_raw(out / "images" / "ascii.ppm.bgr", colour[:4, :5]),
                    "width": 5, "height": 4})
    return records


def warp_fixtures(out: Path, rng: np.random.Generator) -> list[dict]:
    """cv2.warpAffine (bilinear, border 0) on random matrices: rotations, flips, up- and down-scaling, shears,
    parts outside the source."""
    src = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    src_path = out / "warp" / "source.ppm"
    src_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(src_path), src)
    records = []
    for i in range(24):
        angle, scale = rng.uniform(-np.pi, np.pi), float(np.exp(rng.uniform(np.log(0.2), np.log(4.0))))
        c, s = np.cos(angle) * scale, np.sin(angle) * scale
        a = np.array([[c, -s], [s, c]]) @ np.array([[1.0, rng.uniform(-0.3, 0.3)], [0.0, rng.choice([-1.0, 1.0])]])
        size = (int(rng.integers(8, 140)), int(rng.integers(8, 140)))
        centre = np.array([rng.uniform(-40, 200), rng.uniform(-40, 160)])
        t = np.array(size, np.float64) / 2 - a @ centre
        matrix = np.hstack([a, t[:, None]])
        warped = cv2.warpAffine(src, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(0, 0, 0))
        records.append({"src": str(src_path), "matrix": matrix.reshape(-1).tolist(), "width": size[0],
                        "height": size[1], "expected": write_raw(out / "warp" / f"{i:02d}.bgr", warped)})
    return records


def s32_fixtures(out: Path, rng: np.random.Generator) -> list[dict]:
    """NNIE report blobs: S32 with 12 fractional bits, rows padded to 16-byte strides with junk in the padding."""
    records = []
    scale = 1 << OUTPUT_FRACTION_BITS
    for i, (num, chn, height, width) in enumerate([(1, 196, 1, 1), (1, 1, 1, 196), (1, 3, 1, 1), (1, 1, 1, 3),
                                                  (2, 3, 5, 7)]):
        stride = -(-width * 4 // 16) * 16
        blob = rng.integers(-(1 << 31), (1 << 31) - 1, (num, chn, height, stride // 4), dtype=np.int64)
        values = rng.normal(0, 2, (num, chn, height, width))
        blob[..., :width] = np.round(values * scale)
        expected = (blob[..., :width].astype(np.float64) / scale).astype(np.float32)
        records.append({"file": write_raw(out / "s32" / f"{i}.s32", blob.astype(np.int32)), "num": num, "chn": chn,
                        "height": height, "width": width, "stride": stride, "scale": scale,
                        "expected": write_raw(out / "s32" / f"{i}.f32", expected)})
    return records


def run_cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pfpld_app.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"make_fixtures: pfpld {' '.join(args)} failed: {last}")
    return proc.stdout


def face_fixtures(out: Path, rng: np.random.Generator, model: str) -> tuple[list[dict], str]:
    """Faces on pictures, their boxes, the contract's matrices, crops and inputs; with a model, Python ncnn's
    outputs on those inputs, their decoding, and `pfpld predict --json` on the pictures."""
    source = source_from_random_init(model, 0.25, seed=3)
    contract = source.contract
    ckpt = out / "model.pt"
    save_checkpoint(ckpt, state_dict=source.module.state_dict(), spec=source.spec, contract=contract)
    run_cli("export", str(ckpt), "--target", "ncnn", "--out", str(out / "export"), "--force")
    deploy = str(out / "export" / DEPLOY_FILE)
    names = json.loads((out / "export" / f"{source.stem}.ncnn.names.json").read_text())
    runner = NcnnRunner(out / "export" / f"{source.stem}.ncnn.param", out / "export" / f"{source.stem}.ncnn.bin", names)
    planes = board_plane_order(contract)
    records = []
    for i in range(FACES):
        face = render_face(rng, image_size=(int(rng.integers(200, 420)), int(rng.integers(200, 420))))
        box = np.asarray(landmark_box(face.points_98)) + rng.normal(0, 3, 4)       # a detector's box, not exact
        if i == FACES - 1:                                             # partly outside the picture
            box = np.array([-20.0, -15.0, box[2] - box[0] - 20.0, box[3] - box[1] - 15.0])
        box = [round(float(v), 2) for v in box]
        suffix = ".bmp" if i == 1 else ".ppm"
        image_path = out / "faces" / f"face{i}{suffix}"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_path), face.image)
        crop, matrix = contract.crop_image(cv2.imread(str(image_path), cv2.IMREAD_COLOR), box)
        chw = contract.to_tensor_layout(crop)
        stem = out / "faces" / f"face{i}"
        planar = []
        for align in ALIGNS:
            stride = -(-contract.input_size // align) * align
            rows = np.zeros((3, contract.input_size, stride), np.uint8)       # the bundle's packing, rows padded
            rows[:, :, :contract.input_size] = np.frombuffer(planar_bytes(crop, planes), np.uint8).reshape(
                3, contract.input_size, contract.input_size)
            planar.append({"align": align, "stride": stride, "file": write_raw(Path(f"{stem}.planar{align}.u8"), rows)})
        record = {"image": str(image_path), "box": box, "matrix": matrix.reshape(-1).tolist(),
                  "crop": write_raw(Path(f"{stem}.crop.bgr"), crop), "chw": write_raw(Path(f"{stem}.chw.f32"), chw),
                  "planes": list(planes), "planar": planar}
        outputs = runner.run(chw[None])
        record["ncnn_outputs"] = {name: write_raw(Path(f"{stem}.{name}.f32"), value.reshape(-1).astype(np.float32))
                                  for name, value in outputs.items()}
        decoded = {}
        for spec in source.spec.outputs:
            value = outputs[spec.name].reshape(-1)
            if spec.kind == "landmarks":
                decoded["landmarks_px"] = contract.points_from_crop(value.reshape(-1, 2), matrix).tolist()
            elif spec.kind == "pose":
                decoded["pose_deg"] = np.degrees(value.astype(np.float64)).tolist()
        record["decoded"] = decoded
        if i in PREDICT_CLI:
            record["predict"] = json.loads(run_cli("predict", str(out / "model.pt"), str(image_path), "--box",
                                                   ",".join(str(v) for v in box), "--json"))
        records.append(record)
    return records, deploy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="pfpld")
    args = parser.parse_args()
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(20261203)
    faces, deploy = face_fixtures(tmp, rng, args.model)
    index = {"images": image_fixtures(tmp, rng), "warps": warp_fixtures(tmp, rng), "s32": s32_fixtures(tmp, rng),
             "faces": faces, "deploy": deploy}
    text = json.dumps(index, indent=1).replace(str(tmp), str(args.out))
    (tmp / "index.json").write_text(text)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"fixtures: {args.out} ({len(faces)} faces, {len(index['warps'])} warps, model {args.model})")


if __name__ == "__main__":
    main()
