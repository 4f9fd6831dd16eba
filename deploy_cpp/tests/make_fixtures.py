"""Write the fixtures of deploy_cpp's tests with the Python side, at test time (nothing is committed).

    python deploy_cpp/tests/make_fixtures.py --out BUILD/fixtures [--models pfpld,landmark5,hopenet]

Everything the C++ tests compare with comes from the same Python code users run: images written by OpenCV
(PPM, PGM, BMP), cv2.warpAffine on random and contract matrices, CropRule / PreprocessContract's crop matrices on
every branch of the rule (and the aligned rule's whole-image box), S32 blobs with padded strides, and for each model
of FIXTURE_MODELS (random weights, exported by `pfpld export --target ncnn`; and a user's SphereFace-like ONNX with
a 112x96 input, `pfpld export --onnx`, OUTSIDE_MODELS): its contract's crops and network inputs
on face pictures (aligned faces for a recognition model), the NNIE bundle's planar packing, Python ncnn's outputs on
those inputs, their decoding by the spec, and `pfpld predict --json` on some of the pictures. index.json lists it
all.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from convert.artifacts import ExportFolder
from convert.deploy import DEPLOY_FILE
from convert.export import source_from_random_init
from convert.runtimes import NcnnRunner
from pfpld.checkpoint import load_checkpoint, save_checkpoint
from pfpld.align import TEMPLATE_SIZE, align_face, five_points
from pfpld.contract import CropRule, PreprocessContract, aligned_crop, landmark_box
from pfpld.data.synthetic import render_face
from pfpld.verification import cosine_scores
from quant.nnie import board_plane_order, planar_bytes
from quant.nnie_sim import OUTPUT_FRACTION_BITS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from outside_models import SPHEREFACE_HW, sphereface_like_onnx  # noqa: E402  (the pytest chain's network)

ALIGNS = (1, 16, 32)                 # planar U8 row alignments: none, NNIE's 16 bytes, 32 bytes
FACES = 6                            # face pictures, each cropped by every model's contract
# The models checked end to end: registry name, options (tiny widths: the fixtures are written in every test run),
# and the faces also run through `pfpld predict --json` (a CLI start each: keep few). pfpld: 98 points + pose in
# radians; landmark5: 5 points at 48x48 in BGR; hopenet: pose in degrees (+ bin logits) only, loose crop with side
# min, ImageNet mean and scale; facerec: a 512-d embedding of an aligned face (the whole image, resampled to 64x64),
# RGB, (pixel - 127.5) / 128, two predictions without --box and `pfpld predict A --compare B --json` of those two. A model with an aligned contract runs on
# the aligned pictures (aligned_faces), the others on the face pictures with a box (render_faces).
FIXTURE_MODELS = {
    "pfpld": ({"width": 0.25}, (0, 5)),
    "landmark5": ({"input_size": 48, "width": 0.25}, (1,)),
    "hopenet": ({"backbone": "mobilenetv2", "input_size": 112, "width": 0.5}, (5,)),
    "facerec": ({"input_size": 64, "width": 0.5}, (0, 2)),
}
# Models from outside the project (`pfpld export --onnx FILE` with its contract options): SphereFace's 112x96 input,
# an aligned contract whose crop is the 112x96 window inside each aligned picture (side min).
OUTSIDE_MODELS = {
    "sphereface": (sphereface_like_onnx, ("--color-order", "RGB", "--mean", "127.5,127.5,127.5", "--scale", "1/128",
                                          "--crop-box-source", "aligned", "--output", "fc5=embedding")),
}
# Aligned faces (file name, width): ArcFace's 112x112 alignment, and 96 columns of it (SphereFace's 96x112 shape), whose
# square crop pads the sides.
ALIGNED = (("aligned0.ppm", 112), ("aligned1.bmp", 112), ("aligned2.ppm", 96))
# Crop rules beside the models' own (input size, CropRule fields): every branch of CropRule.square.
CROP_RULES = (
    (112, {"expand": 1.2}),
    (48, {"expand": 1.25, "shift_y": 0.1, "side": "min"}),
    (112, {"expand": 224.0 / 240.0, "loose_k": 0.3, "side": "min"}),
    (64, {"expand": 1.1, "shift_y": -0.05, "loose_k": 0.2, "side": "max"}),
)
# The aligned rules (facerec's; SphereFace's rows x columns with its window inside the picture, and one holding it):
# the box is the whole image of each of these sizes (width, height).
ALIGNED_RULES = ((64, 64, {"box_source": "aligned", "expand": 1.0}),
                 (*SPHEREFACE_HW, dataclasses.asdict(aligned_crop(*SPHEREFACE_HW))),
                 (*SPHEREFACE_HW, {"box_source": "aligned", "expand": 1.0, "side": "max"}))
ALIGNED_SIZES = ((112, 112), (96, 112), (112, 96), (250, 250), (37, 53), (640, 480))


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


def run_cli_calls(calls: list[tuple[str, ...]]) -> list[str]:
    """The CLI calls two at a time: most of each is starting Python and torch (the tests' budget, on 2 cores)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: run_cli(*args), calls))


def random_checkpoint(path: Path, model: str, options: dict, seed: int) -> None:
    """The model `pfpld export --model M --init random --model-option ...` exports, saved as a checkpoint (which
    `pfpld predict` needs too)."""
    source = source_from_random_init(model, width=None, seed=seed, options=options)
    save_checkpoint(path, state_dict=source.module.state_dict(), spec=source.spec, contract=source.contract)


def render_faces(out: Path, rng: np.random.Generator) -> list[tuple[str, list[float]]]:
    """Face pictures with a detector-like box each (not the exact landmark extent; the last one partly outside)."""
    faces = []
    for i in range(FACES):
        face = render_face(rng, image_size=(int(rng.integers(200, 420)), int(rng.integers(200, 420))))
        box = np.asarray(landmark_box(face.points_98)) + rng.normal(0, 3, 4)
        if i == FACES - 1:
            box = np.array([-20.0, -15.0, box[2] - box[0] - 20.0, box[3] - box[1] - 15.0])
        image_path = out / "faces" / f"face{i}{'.bmp' if i == 1 else '.ppm'}"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_path), face.image)
        faces.append((str(image_path), [round(float(v), 2) for v in box]))
    return faces


def aligned_faces(out: Path, rng: np.random.Generator) -> list[tuple[str, list[float]]]:
    """Faces aligned by pfpld.align from their five points (as `pfpld synth --identities` makes them), each with its
    box: the whole picture (PreprocessContract.aligned_box)."""
    faces = []
    for name, width in ALIGNED:
        face = render_face(rng, image_size=(int(rng.integers(200, 320)), int(rng.integers(200, 320))))
        aligned, _ = align_face(face.image, five_points(face.points_98))
        left = (TEMPLATE_SIZE - width) // 2
        aligned = np.ascontiguousarray(aligned[:, left:left + width])
        path = out / "aligned" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), aligned)
        faces.append((str(path), list(PreprocessContract.aligned_box(aligned))))
    return faces


def crop_rule_fixtures(faces: list[tuple[str, list[float]]], rng: np.random.Generator) -> list[dict]:
    """CropRule.square and PreprocessContract.crop_matrix on every branch of the rule (loose or not, side max or
    min, a vertical shift), on the faces' boxes and on random boxes with unround corners."""
    boxes = [box for _, box in faces]
    for _ in range(6):
        x1, y1 = rng.uniform(-50, 300, 2)
        boxes.append([float(x1), float(y1), float(x1 + rng.uniform(5, 250)), float(y1 + rng.uniform(5, 250))])
    records = []
    for input_size, rule in CROP_RULES:
        contract = PreprocessContract(input_size=input_size, crop=CropRule(**rule))
        for box in boxes:
            records.append({"input_size": input_size, "crop": dataclasses.asdict(contract.crop), "box": box,
                            "matrix": contract.crop_matrix(box).reshape(-1).tolist()})
    for input_size, input_width, rule in ALIGNED_RULES:
        contract = PreprocessContract(input_size=input_size, input_width=input_width, crop=CropRule(**rule))
        for width, height in ALIGNED_SIZES:     # the C++ side derives the box from the image size alone
            box = contract.aligned_box(np.zeros((height, width, 3), np.uint8))
            records.append({"input_size": input_size, "input_width": input_width,
                            "crop": dataclasses.asdict(contract.crop), "image_size": [width, height],
                            "box": list(box), "matrix": contract.crop_matrix(box).reshape(-1).tolist()})
    return records


def model_fixtures(out: Path, model: str, faces: list[tuple[str, list[float]]]) -> dict:
    """One exported model on every face picture: the contract's matrices, crops and inputs, Python ncnn's outputs on
    those inputs and their decoding by the spec."""
    folder = out / model
    deploy = folder / "export" / DEPLOY_FILE
    exported = ExportFolder.open(folder / "export")       # the spec and contract as the export carries them
    spec, contract = exported.spec, exported.contract
    ncnn = json.loads(deploy.read_text())["runtimes"]["ncnn"]
    param, weights = deploy.with_name(ncnn["param"]), deploy.with_name(ncnn["bin"])
    names = json.loads(param.with_name(param.name.replace(".param", ".names.json")).read_text())
    runner = NcnnRunner(param, weights, names)
    planes = board_plane_order(contract)
    records = []
    for i, (image_path, box) in enumerate(faces):
        crop, matrix = contract.crop_image(cv2.imread(image_path, cv2.IMREAD_COLOR), box)
        chw = contract.to_tensor_layout(crop)
        stem = folder / f"face{i}"
        planar = []
        height, width = contract.input_hw
        for align in ALIGNS:
            stride = -(-width // align) * align
            rows = np.zeros((3, height, stride), np.uint8)       # the bundle's packing, rows padded
            rows[:, :, :width] = np.frombuffer(planar_bytes(crop, planes), np.uint8).reshape(3, height, width)
            planar.append({"align": align, "stride": stride, "file": write_raw(Path(f"{stem}.planar{align}.u8"), rows)})
        face = {"image": image_path, "box": box, "matrix": matrix.reshape(-1).tolist(),
                "crop": write_raw(Path(f"{stem}.crop.bgr"), crop), "chw": write_raw(Path(f"{stem}.chw.f32"), chw),
                "planes": list(planes), "planar": planar}
        outputs = runner.run(chw[None])
        face["ncnn_outputs"] = {name: write_raw(Path(f"{stem}.{name}.f32"), value.reshape(-1).astype(np.float32))
                                for name, value in outputs.items()}
        # The spec's own decoding, in float64 as the C++ side decodes (so the pose compares to the last bit).
        landmarks, pose_rad = spec.decode([outputs[name].reshape(1, -1).astype(np.float64)
                                           for name in spec.output_names])
        decoded = {}
        if landmarks is not None:
            decoded["landmarks_px"] = contract.points_from_crop(landmarks[0], matrix).tolist()
        if pose_rad is not None:
            decoded["pose_rad"] = pose_rad[0].tolist()
            decoded["pose_deg"] = np.degrees(pose_rad[0]).tolist()
        embedding = next((outputs[o.name].reshape(-1) for o in spec.outputs if o.kind == "embedding"), None)
        if embedding is not None:     # as predict_face reads it: the first embedding output, untouched
            decoded["embedding"] = embedding.astype(np.float64).tolist()
        face["decoded"] = decoded
        records.append(face)
    options = FIXTURE_MODELS[model][0] if model in FIXTURE_MODELS else {"onnx": OUTSIDE_MODELS[model][1]}
    result = {"model": model, "options": options, "deploy": str(deploy), "faces": records}
    if "embedding" in records[0]["decoded"]:
        # pfpld.verification.cosine_scores of every pair of faces' Python ncnn embeddings, for the C++ cosine
        pairs = [(i, j) for i in range(len(records)) for j in range(i + 1, len(records))]
        scores = cosine_scores([records[i]["decoded"]["embedding"] for i, _ in pairs],
                               [records[j]["decoded"]["embedding"] for _, j in pairs])
        result["cosines"] = [{"faces": [i, j], "cosine": float(c)} for (i, j), c in zip(pairs, scores)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    known = [*FIXTURE_MODELS, *OUTSIDE_MODELS]
    parser.add_argument("--models", default=",".join(known), help=f"comma-separated, of {', '.join(known)}")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in known]
    if unknown or not models:
        raise SystemExit(f"make_fixtures: --models {args.models}: expected some of {', '.join(known)}")
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(20261203)
    sources = {}
    for model in models:
        (tmp / model).mkdir()
        if model in OUTSIDE_MODELS:
            make, options = OUTSIDE_MODELS[model]
            sources[model] = ("--onnx", str(make(tmp / model / f"{model}.onnx")), *options)
            continue
        random_checkpoint(tmp / model / "model.pt", model, FIXTURE_MODELS[model][0], seed=3)
        sources[model] = (str(tmp / model / "model.pt"),)
    faces = render_faces(tmp, rng)
    # the aligned pictures from their own generator: the other fixtures stay as they were
    aligned = aligned_faces(tmp, np.random.default_rng(20261204))
    pictures = {m: aligned if m in OUTSIDE_MODELS or load_checkpoint(tmp / m / "model.pt").contract.aligned else faces
                for m in models}
    # Every CLI call at once (exports and predictions only need the checkpoints and the pictures).
    exports = [("export", *sources[m], "--target", "ncnn", "--out", str(tmp / m / "export"), "--force")
               for m in models]
    # `pfpld predict` runs a checkpoint: a model from outside has none, it is checked on its ncnn outputs
    predicted = [(m, i) for m in models if m in FIXTURE_MODELS for i in FIXTURE_MODELS[m][1]]
    # an aligned face goes without --box (the whole picture), as a user runs it
    predictions = [("predict", str(tmp / m / "model.pt"), pictures[m][i][0], "--json") +
                   (() if pictures[m] is aligned else ("--box", ",".join(str(v) for v in pictures[m][i][1])))
                   for m, i in predicted]
    compared = [(m, FIXTURE_MODELS[m][1][:2]) for m in models if m in FIXTURE_MODELS and pictures[m] is aligned]
    comparisons = [("predict", str(tmp / m / "model.pt"), pictures[m][i][0], "--compare", pictures[m][j][0], "--json")
                   for m, (i, j) in compared]
    answers = run_cli_calls(exports + predictions + comparisons)[len(exports):]
    records = {model: model_fixtures(tmp, model, pictures[model]) for model in models}
    for (model, i), answer in zip(predicted, answers):
        records[model]["faces"][i]["predict"] = json.loads(answer)
    for (model, faces_compared), answer in zip(compared, answers[len(predicted):]):
        records[model]["compare"] = {"faces": list(faces_compared), "predict": json.loads(answer)}
    index = {"images": image_fixtures(tmp, rng), "warps": warp_fixtures(tmp, rng), "s32": s32_fixtures(tmp, rng),
             "crop_rules": crop_rule_fixtures(faces, rng), "models": list(records.values())}
    text = json.dumps(index, indent=1).replace(str(tmp), str(args.out))
    (tmp / "index.json").write_text(text)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"fixtures: {args.out} ({len(faces)} faces, {len(aligned)} aligned, {len(index['warps'])} warps, {len(index['crop_rules'])} crop "
          f"matrices, models {', '.join(models)})")


if __name__ == "__main__":
    main()
