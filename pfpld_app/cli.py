"""The `pfpld` command: a thin face over the modules. Each command parses options and calls one function that a
test can call too. User mistakes (PfpldError) become one red line and exit code 2, never a traceback."""
from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import click

from pfpld import DEFAULT_MODEL
from pfpld.devices import AMP_CHOICES
from pfpld.errors import InputError, PfpldError
from pfpld.fileio import force_help, write_text_atomic


def user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PfpldError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)
    return wrapper


class SizeHW(click.ParamType):
    """An image size: SIDE (a square) or ROWSxCOLUMNS (pfpld.contract.parse_hw), e.g. 112 or 112x96."""
    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from pfpld.contract import parse_hw
        try:
            rows, columns = parse_hw(value)
        except PfpldError as exc:
            self.fail(str(exc), param, ctx)
        if min(rows, columns) < 16:
            self.fail(f"size {value!r}: expected at least 16 pixels each way", param, ctx)
        return rows, columns


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pfpld")
def main():
    """Face landmarks and head pose, from training to NNIE and ncnn."""


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write.")
@click.option("--n", type=click.IntRange(min=20), default=1000, show_default=True, help="Number of faces (landmark "
              "formats).")
@click.option("--identities", type=click.IntRange(min=1), help="Write a face-recognition set instead of the landmark "
              "formats: this many training identities as an ImageFolder set (imagefolder/<id>/NNNN.jpg), plus "
              "--heldout other identities in LFW's layout (lfw/) with an LFW pairs.txt, all aligned to 112x112. "
              "A demo that trains on 2 cores: 150.")
@click.option("--per-identity", type=click.IntRange(min=2), help="With --identities: aligned faces per identity.  "
              "[default: 15]")
@click.option("--heldout", type=click.IntRange(min=2), help="With --identities: held-out identities for pairs.txt "
              "(never in imagefolder/).  [default: 50]")
@click.option("--pairs-per-fold", type=click.IntRange(min=1), help="With --identities: same-person pairs, and as many "
              "different-person pairs, in each of pairs.txt's person-disjoint folds.  [default: 30]")
@click.option("--folds", type=click.IntRange(min=1), help="With --identities: folds of pairs.txt (LFW: 10).  "
              "[default: 10]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help=force_help("synth"))
@click.pass_context
@user_errors
def synth(ctx, out, n, identities, per_identity, heldout, pairs_per_fold, folds, seed, force):
    """Render synthetic faces and write them as WFLW, LaPa, 300W-LP and AFLW2000 on-disk datasets; with
    --identities, render synthetic people instead and write a recognition set (ImageFolder + LFW pairs)."""
    recognition = {"--per-identity": per_identity, "--heldout": heldout, "--pairs-per-fold": pairs_per_fold,
                   "--folds": folds}
    if identities is None:
        given = [k for k, v in recognition.items() if v is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply with --identities (a recognition set)")
        from pfpld.data.synthetic import generate_dataset
        summary = generate_dataset(out, n=n, seed=seed, force=force)
    else:
        if ctx.get_parameter_source("n") != click.core.ParameterSource.DEFAULT:
            raise click.UsageError("--n counts landmark faces; with --identities use --per-identity and --heldout")
        from pfpld.data import identities as ids
        summary = ids.generate_identities(
            out, identities, per_identity=per_identity or ids.DEFAULT_PER_IDENTITY,
            heldout=heldout or ids.DEFAULT_HELDOUT, pairs_per_fold=pairs_per_fold or ids.DEFAULT_PAIRS_PER_FOLD,
            folds=folds or ids.DEFAULT_FOLDS, seed=seed, force=force)
    click.echo(summary.table())
    click.echo(f"wrote {out}  (contact sheet: {out / 'preview.png'})")


@main.command("prepare-data")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write.")
@click.option("--wflw", type=click.Path(exists=True, file_okay=False, path_type=Path), help="WFLW root "
              "(holds WFLW_annotations/ and WFLW_images/).")
@click.option("--lapa", type=click.Path(exists=True, file_okay=False, path_type=Path), help="LaPa root "
              "(holds train/ val/ test/).")
@click.option("--300wlp", "w300lp", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="300W-LP root (holds AFW/ HELEN/ ... landmarks/).")
@click.option("--aflw2000", type=click.Path(exists=True, file_okay=False, path_type=Path), help="AFLW2000-3D folder.")
@click.option("--wflw-pose", type=click.Path(dir_okay=False, path_type=Path), help="WFLW's pose labels written "
              "by `pfpld label-pose --out FILE`.  [default: the sidecar label-pose writes in the WFLW folder, if any]")
@click.option("--imagefolder", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Recognition "
              "models: one folder per identity of aligned face images (CASIA-WebFace / MS1M style).")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Crop with this model's contract (`pfpld models`).")
@click.option("--input-size", type=click.IntRange(min=16), help="The model's input size.  [default: the model's]")
@click.option("--force", is_flag=True, help=force_help("prepared"))
@user_errors
def prepare_data(out, wflw, lapa, w300lp, aflw2000, wflw_pose, imagefolder, model, input_size, force):
    """Crop every face with the model's contract (its crop rule, size and normalisation) and write the merged
    training/test set."""
    from pfpld.data.prepare import prepare_dataset
    from pfpld.models import build_model
    if not any([wflw, lapa, w300lp, aflw2000, imagefolder]):
        raise click.UsageError("give at least one of --wflw, --lapa, --300wlp, --aflw2000, --imagefolder")
    _, _, contract = build_model(model, **({} if input_size is None else {"input_size": input_size}))
    summary = prepare_dataset(out, wflw=wflw, lapa=lapa, w300lp=w300lp, aflw2000=aflw2000, imagefolder=imagefolder,
                              wflw_pose=wflw_pose, contract=contract, force=force)
    click.echo(summary.table())
    click.echo(f"wrote {out}")


@main.command("align")
@click.argument("images", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write: every aligned face at "
              "its path relative to IMAGES (a folder per identity stays one), align_report.txt (skipped images and "
              "why), align_points.txt (the five points used) and align.json.")
@click.option("--size", type=SizeHW(), default="112", show_default=True, help="The aligned face: SIDE for a square "
              "(the ArcFace 112x112 template scaled to it) or ROWSxCOLUMNS, e.g. 112x96 (rows x columns, SphereFace's "
              "aligned faces: the template scaled to the rows and centred in the columns, which at 112x96 is "
              "SphereFace's own).")
@click.option("--points", "points_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Five points per image, one image a line: 'relative/path.jpg x1 y1 x2 y2 x3 y3 x4 y4 x5 y5' (tabs "
              "or spaces; blank and # lines skipped; an integer label after the path, as in CASIA-WebFace's file, is "
              "ignored): left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner, in "
              "0-based image pixels, LEFT = IMAGE LEFT (the subject's right eye), as MTCNN and SphereFace's "
              "lfw_landmark.txt / casia_landmark.txt give them. Paths are relative to IMAGES.")
@click.option("--landmarks", type=click.Path(path_type=Path), help="Instead of --points: a landmark checkpoint "
              "(pfpld's 98 points or landmark5's 5; the five points of 98 are landmark5's: eye centres from the "
              "eye corners, nose tip, mouth corners) run on a face box from --boxes or --box.")
@click.option("--boxes", "boxes_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --landmarks: a boxes.txt, 'file x1 y1 x2 y2' a line, files relative to its own folder (as "
              "calib and check-parity read it), e.g. IMAGES/boxes.txt.")
@click.option("--box", help="With --landmarks: one face box X1,Y1,X2,Y2 for every image (pixels, the landmark "
              "extent the crop rule expects). LFW's 250x250 faces are centred: 69,99,181,175 (the project's face "
              "template fitted to the mean five points of LFW's public five-point file).")
@click.option("--force", is_flag=True, help=force_help("aligned"))
@user_errors
def align_cmd(images, out, size, points_file, landmarks, boxes_file, box, force):
    """Align raw face photos (IMAGES: e.g. LFW's unaligned 250x250 lfw/ or CASIA-WebFace) to the ArcFace five-point
    template (or SphereFace's, --size 112x96), for `prepare-data --imagefolder`, `eval --pairs`, `calib` and
    `check-parity --pairs`. Images without points or box, listed but missing, or unreadable are skipped and counted.

    \b
    pfpld align lfw --points lfw_landmark.txt --out lfw-aligned
    pfpld align lfw --points lfw_landmark.txt --size 112x96 --out lfw-112x96
    pfpld align lfw --landmarks runs/pfpld/best.pt --box 69,99,181,175 --out lfw-aligned
    pfpld align photos --landmarks runs/landmark5/best.pt --boxes photos/boxes.txt --out photos-aligned
    """
    from pfpld.align_images import align_images
    from pfpld.predict import parse_box
    if (points_file is None) == (landmarks is None):
        raise click.UsageError("give either --points FILE or --landmarks CKPT (with --boxes FILE or --box X1,Y1,X2,Y2)")
    if landmarks is None and (boxes_file is not None or box is not None):
        raise click.UsageError("--boxes and --box go with --landmarks (a points file already places the faces)")
    if landmarks is not None and (boxes_file is None) == (box is None):
        raise click.UsageError("--landmarks needs either --boxes FILE or one --box X1,Y1,X2,Y2")
    summary = align_images(images, out, points_file=points_file, landmarks=landmarks, boxes_file=boxes_file,
                           box=parse_box(box) if box is not None else None, size=size, force=force)
    click.echo(summary.line())


@main.command("label-pose")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="WFLW root "
              "(holds WFLW_annotations/ and WFLW_images/).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the labels here instead (then `prepare-data --wflw DIR --wflw-pose FILE`).  [default: the "
                   "sidecar prepare-data reads, WFLW_annotations/list_98pt_rect_attr_train_test/pfpld_pose_labels.txt]")
@user_errors
def label_pose_cmd(data, out):
    """Fit a head pose (yaw, pitch, roll) to every WFLW face with solvePnP and the project's 3D template, and
    write it beside the annotations, so `prepare-data --wflw` gives WFLW faces a pose label."""
    from pfpld.pose6d import label_wflw
    summary = label_wflw(data, out=out)
    click.echo(summary.table())


@main.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A folder written by `pfpld prepare-data`.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder (last.pt, best.pt, "
              "metrics.csv).")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="A registry model (`pfpld models`); the data "
              "must be prepared with its contract (`pfpld prepare-data --model`).")
@click.option("--width", type=float, default=1.0, show_default=True, help="Channel width multiplier.")
@click.option("--backbone", help="hopenet: resnet18, resnet50 (the paper's) or mobilenetv2 (for boards).  "
              "[default: the model's]")
@click.option("--epochs", type=click.IntRange(min=1), default=80, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--milestones", default="", help="Epochs where lr x0.1, e.g. 30,60 (default: 3/8 and 3/4 of "
              "--epochs).")
@click.option("--schedule", type=click.Choice(["step", "cosine"]), default="step", show_default=True,
              help="step: lr x0.1 at the milestones (the reference); cosine: cosine decay to lr/100, stepped per "
              "batch (better for short runs).")
@click.option("--warmup-epochs", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Linear warm-up from lr/100 over this many epochs (fractions allowed), before either schedule.")
@click.option("--resume", type=click.Path(path_type=Path), help="A last.pt to continue exactly.")
@click.option("--init-from", type=click.Path(path_type=Path), help="Start from this pfpld checkpoint's weights (a "
              "run's, or a released model's from `pfpld import`): its model, options and contract, a new optimizer and "
              "schedule (and a new margin head for a recognition model). The data must be prepared with its "
              "contract.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), help="Loader processes (default: none on the CPU, where "
              "crops are memory-mapped and augmented batched in the training process; 2 with CUDA).")
# Loss options default to None: pfpld.losses.LossConfig holds the defaults (and why), the CLI does not re-type them.
@click.option("--wing-w", type=float, help="Wing w, in crop pixels.  [default: LossConfig's]")
@click.option("--wing-epsilon", type=float, help="Wing epsilon, in crop pixels.  [default: LossConfig's]")
@click.option("--eye-weight", type=float, help="Weight of the eye points 60-75.  [default: LossConfig's]")
@click.option("--landmark-weight", type=float, help="Weight of the landmark term.  [default: LossConfig's]")
@click.option("--pose-weight", type=float, help="Weight of smooth-L1 on pose radians (the PFPLD reference used 1000 "
              "with Wing on [0,1] coordinates; see pfpld/losses.py).  [default: LossConfig's]")
@click.option("--bins-alpha", type=float, help="hopenet: weight of the regression on the softmax expectation "
              "beside the bins' cross-entropy.  [default: LossConfig's, 1, the paper's]")
@click.option("--bins-regression", help="hopenet: that regression, mse (the paper's, in degrees^2) or smooth_l1 (of "
              "the error in bin widths; see pfpld/pose_bins.py).  [default: LossConfig's, mse]")
@click.option("--output-lr-factor", type=float, help="Learning rate of the model's output layers as a multiple of "
              "--lr (hopenet: its three bin layers, 0.1 by default: at 1 the paper's loss saturates their softmax "
              "when training from scratch; the paper's code fine-tunes them at 5).  [default: the model's]")
@click.option("--head", help="facerec: the margin head, arcface, cosface or sphereface (training only; the export is "
              "the embedding network).  [default: arcface]")
@click.option("--s", "head_s", type=float, help="facerec: the head's scale s.  [default: the head's: 64, 64, 30]")
@click.option("--m", "head_m", type=float, help="facerec: the head's margin m (ArcFace: angle in radians, CosFace: "
              "cosine, SphereFace: integer multiplier).  [default: the head's: 0.5, 0.35, 4]")
@click.option("--no-augment", is_flag=True, help="Train on the plain contract crops.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--amp", type=click.Choice(list(AMP_CHOICES)), default="auto", show_default=True,
              help="Mixed precision (auto: on CUDA bf16 where supported, else fp16 with a GradScaler; off on the CPU, "
              "where bf16 / fp16 run only when asked for: bf16 pays on CPUs with AMX).")
@click.option("--channels-last", is_flag=True, help="Channels-last memory format (faster convolutions on recent GPUs).")
@click.option("--val-fraction", type=click.FloatRange(min=0, max=0.5), help="Part of the training split held out "
              "to validate every epoch and choose best.pt (0: none, no best.pt); the test split stays for `pfpld "
              "eval`.  [default: TrainConfig's, 0.05]")
@user_errors
def train(data, out, model, width, backbone, epochs, batch_size, lr, weight_decay, milestones, schedule, warmup_epochs,
          resume, init_from, seed, workers, val_fraction, wing_w, wing_epsilon, eye_weight, landmark_weight,
          pose_weight, bins_alpha, bins_regression, output_lr_factor, head, head_s, head_m, no_augment, device, amp,
          channels_last):
    """Train a model on a prepared dataset (data-parallel when started with torchrun)."""
    from pfpld.losses import LossConfig
    from pfpld.train import TrainConfig, train as run_training
    given = [f"--{p}" for p in ("model", "width", "backbone")
             if click.get_current_context().get_parameter_source(p) is not click.core.ParameterSource.DEFAULT]
    if init_from and given:
        raise InputError(f"--init-from {init_from} takes the model and its options from the checkpoint: drop "
                         f"{', '.join(given)}")
    try:
        ms = tuple(int(m) for m in milestones.split(",") if m.strip())
    except ValueError:
        raise click.BadParameter(f"{milestones!r}: expected comma-separated epochs", param_hint="--milestones")
    cfg = TrainConfig(data=str(data), out=str(out), model=model, width=width,
                      model_options={} if backbone is None else {"backbone": backbone}, epochs=epochs,
                      batch_size=batch_size,
                      lr=lr, weight_decay=weight_decay, milestones=ms, schedule=schedule, warmup_epochs=warmup_epochs,
                      seed=seed, workers=workers,
                      augment=not no_augment, device=device, amp=amp, channels_last=channels_last,
                      **({} if val_fraction is None else {"val_fraction": val_fraction}),
                      output_lr_factor=output_lr_factor, init_from=str(init_from) if init_from else None,
                      loss=LossConfig(**{k: v for k, v in dict(
                          wing_w_px=wing_w, wing_epsilon_px=wing_epsilon, eye_weight=eye_weight,
                          landmark_weight=landmark_weight, pose_weight=pose_weight,
                          bins_alpha=bins_alpha, bins_regression=bins_regression, head=head, head_s=head_s,
                          head_m=head_m).items()
                          if v is not None}))
    row = run_training(cfg, resume=str(resume) if resume else None)
    if row:
        shown = [f"val NME {100 * row['val_nme']:.2f}%" if not math.isnan(row["val_nme"]) else "",
                 f"val pose MAE {row['val_pose_mae_deg']:.2f} deg" if not math.isnan(row["val_pose_mae_deg"]) else "",
                 f"val identification error {100 * row['val_id_error']:.1f}%"
                 if not math.isnan(row.get("val_id_error", math.nan)) else ""]
        shown = "  ".join(v for v in shown if v)
        if not shown:
            click.echo(f"done: epoch {row['epoch']} (no validation faces) -> {out}/last.pt, {out}/metrics.csv")
        else:
            click.echo(f"done: epoch {row['epoch']}  {shown}  -> {out}/last.pt, {out}/best.pt, {out}/metrics.csv")


@main.command("import")
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--from", "origin", required=True, help="The code base that saved CKPT (pfpld.importers.IMPORTERS): "
              "nniefacelib = the original PFPLD (a state_dict with its names, bare, wrapped in a dict or with "
              "DataParallel's module. prefix); deep-head-pose = HopeNet's released weights (hopenet_alpha1.pkl, "
              "hopenet_robust_alpha1.pkl: ResNet-50).")
@click.option("--width", type=float, help="Channel width (default: read from the weights).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The pfpld checkpoint to write.")
@click.option("--force", is_flag=True, help="Replace --out if it is a pfpld checkpoint (anything else is never "
              "replaced).")
@user_errors
def import_cmd(ckpt, origin, width, out, force):
    """Turn a checkpoint trained by another code base of the family into a pfpld checkpoint (weights, spec and the
    reference preprocessing contract), for export, check-parity, eval and predict."""
    from pfpld.importers import import_checkpoint
    imported = import_checkpoint(ckpt, origin, out, width=width, force=force)
    record = imported.record
    how = ", ".join(f"{k} {record[k]}" for k in ("wrapper_key", "data_parallel_prefix") if record.get(k))
    described = " ".join(f"{k}={v}" for k, v in imported.spec.options.items())
    dropped = f", dropped {len(record['dropped_keys'])} unused tensors" if record.get("dropped_keys") else ""
    click.echo(f"imported {len(imported.state_dict)} tensors of {imported.spec.name} {described} (width from "
               f"{record['width_from']}{', ' + how if how else ''}{dropped}) -> {out}")
    click.echo(f"next: pfpld export {out} --target all --out DIR")


@main.command("eval")
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), help="A prepared dataset "
              "(landmark and pose models).")
@click.option("--split", default="test", show_default=True)
@click.option("--pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Recognition models: an "
              "LFW-format pairs.txt (10 folds of same and different pairs) to verify on.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), help="With --pairs: the "
              "folder holding <name>/<name>_NNNN.jpg (aligned faces).  [default: lfw/ beside the pairs file, else its "
              "folder]")
@click.option("--roc", type=click.Path(path_type=Path), help="With --pairs: write the ROC curve here (PNG).  "
              "[default: roc.png beside --json, else none]")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the metrics as JSON.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@user_errors
def eval_cmd(ckpt, data, split, pairs, images, roc, json_out, device):
    """NME / failure rate / AUC (overall, per source, per WFLW attribute) and pose MAE of a checkpoint on a prepared
    dataset; or, for a recognition model, LFW-protocol verification on a pairs file."""
    from pfpld.checkpoint import load_model
    from pfpld.devices import resolve_device
    from pfpld.evaluate import evaluate_model
    where = resolve_device(device)
    model, record = load_model(ckpt)
    model.to(where)
    recognition = any(o.kind == "embedding" for o in record.spec.outputs)
    if recognition != (pairs is not None) or (data is None) == (pairs is None):
        raise InputError(f"{ckpt} is a {record.spec.name} checkpoint: evaluate it with "
                               f"{'--pairs PAIRS (and no --data)' if recognition else '--data DIR (and no --pairs)'}")
    if pairs is not None:
        from pfpld.plots import plot_roc
        from pfpld.recognition import evaluate_pairs
        result = evaluate_pairs(model, record.spec, record.contract, pairs, images)
        click.echo(result.table())
        roc = roc or (Path(json_out).with_name("roc.png") if json_out else None)
        if roc:
            plot_roc(result.model, roc, label=f"{record.spec.name} ({Path(ckpt).name})", baseline=result.baseline)
            click.echo(f"wrote {roc}")
        if json_out:
            write_text_atomic(json_out, json.dumps(result.to_dict(), indent=2) + "\n")
            click.echo(f"wrote {json_out}")
        return
    report = evaluate_model(model, record.spec, data, split=split, contract=record.contract, progress=True)
    click.echo(report.table())
    if json_out:
        write_text_atomic(json_out, report.to_json())
        click.echo(f"wrote {json_out}")


@main.command()
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--box", help="Face box X1,Y1,X2,Y2 in pixels (the crop rule's box); a recognition model takes an "
              "aligned face and its box is the whole image.")
@click.option("--compare", type=click.Path(path_type=Path), help="Recognition models: a second aligned face; print "
              "the cosine of the two embeddings.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the image with landmarks and pose axes.")
@click.option("--json", "as_json", is_flag=True, help="Print landmarks, pose or the embedding as JSON.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@user_errors
def predict(ckpt, image, box, compare, out, as_json, device):
    """What the checkpoint's model predicts for one face in one image (landmarks, head pose, or an embedding),
    printed and drawn."""
    from pfpld.checkpoint import load_model
    from pfpld.devices import resolve_device
    from pfpld.predict import draw_prediction, parse_box, predict_face, read_image, write_image_atomic
    where = resolve_device(device)
    model, record = load_model(ckpt)
    model.to(where)
    aligned = record.contract.aligned
    if box is None and not aligned:
        raise InputError(f"{ckpt}: model {record.spec.name} predicts from a face box: give --box X1,Y1,X2,Y2")
    if compare is not None and not aligned:
        raise InputError(f"--compare: model {record.spec.name} outputs no embedding to compare")
    picture = read_image(image)
    face_box = parse_box(box) if box is not None else record.contract.aligned_box(picture)
    pred = predict_face(model, record.spec, record.contract, picture, face_box)
    if compare is not None:
        from pfpld.verification import cosine_scores
        other = read_image(compare)
        second = predict_face(model, record.spec, record.contract, other, record.contract.aligned_box(other))
        cosine = float(cosine_scores(pred.embedding[None], second.embedding[None])[0])
        click.echo(json.dumps({"cosine": cosine}) if as_json else f"cosine {cosine:.4f} ({image} vs {compare})")
        return
    if as_json:
        click.echo(json.dumps(pred.to_dict()))
    else:
        if pred.points_px is not None:
            click.echo(f"{len(pred.points_px)} landmarks (px): " + " ".join(f"{x:.1f},{y:.1f}"
                                                                              for x, y in pred.points_px[:5])
                       + (" ..." if len(pred.points_px) > 5 else ""))
        if pred.pose_rad is not None:
            yaw, pitch, roll = pred.to_dict()["pose_deg"].values()
            click.echo(f"pose (deg): yaw {yaw:+.1f}  pitch {pitch:+.1f}  roll {roll:+.1f}")
        if pred.embedding is not None:
            click.echo(f"{len(pred.embedding)}-d embedding: " + " ".join(f"{v:+.3f}" for v in pred.embedding[:6]) +
                       f" ... (norm {math.hypot(*pred.embedding):.3f}; compare faces by cosine: --compare)")
    if out:
        write_image_atomic(out, draw_prediction(picture, pred))
        if not as_json:
            click.echo(f"wrote {out}")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), help="Folder to write.  [default: runs/demo for the default "
              "model, runs/demo-MODEL for the others]")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="A registry model (`pfpld models`).")
@click.option("--n", type=click.IntRange(min=20), help="Synthetic faces (landmark and pose models; a recognition "
              "model's demo renders DemoRecipe's identities).  [default: DemoRecipe's]")
@click.option("--epochs", type=click.IntRange(min=1), help="[default: DemoRecipe's]")
@click.option("--width", type=float, help="[default: DemoRecipe's]")
@click.option("--seed", type=int, help="[default: DemoRecipe's]")
@user_errors
def demo(out, model, n, epochs, width, seed):
    """The main job on built-in data: synth -> prepare-data -> train -> eval -> export -> parity -> int8 (the
    recipe and why: pfpld_app/demo.py, DemoRecipe, and the model's demo_recipe in its own file)."""
    from .demo import DemoRecipe, run_demo
    out = out or Path("runs/demo" if model == DEFAULT_MODEL else f"runs/demo-{model}")
    given = dict(n=n, epochs=epochs, width=width, seed=seed)
    result = run_demo(out, DemoRecipe.for_model(model, **{k: v for k, v in given.items() if v is not None}))
    if result["parity"]["verdict"] != "pass":
        click.secho("parity check failed: see the export's parity.md", fg="red", err=True)
        sys.exit(1)


@main.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write, e.g. calib_data/NAME.")
@click.option("--n", type=click.IntRange(min=1), default=32, show_default=True, help="Crops to choose.")
@click.option("--split", default="train", show_default=True, help="Split of a prepared dataset to choose from.")
@click.option("--ckpt", type=click.Path(path_type=Path), help="For images with boxes.txt: predict pose and eye state "
              "with this checkpoint (and use its contract).")
@click.option("--model", "model_name", help="For a folder of aligned faces (recognition models): crop with this "
              "registry model's contract (`pfpld models`), when no --ckpt gives it.")
@click.option("--size", type=SizeHW(), help="For a folder of aligned faces without --model/--ckpt: the network "
              "input, SIDE or ROWSxCOLUMNS (e.g. 112x96 for a SphereFace model).  [default: the size in the folder's "
              "align.json, from `pfpld align`]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help=force_help("calib"))
@user_errors
def calib(data, out, n, split, ckpt, model_name, size, seed, force):
    """Choose calibration crops spread over head pose and eye state (DATA: a prepared dataset, or a folder of
    images with boxes.txt), rejecting near-black, near-white and over-exposed crops. For a recognition model's
    aligned faces (a prepared ImageFolder set, or a folder of aligned images with --model/--ckpt, with --size, or
    as `pfpld align` wrote it) the crops are spread over identities instead."""
    from quant.calibration import aligned_folder_contract, make_calibration_set
    model = contract = spec = None
    if size is not None and (model_name is not None or ckpt is not None):
        raise click.UsageError("--size is for a folder of aligned faces without --model or --ckpt (they give it)")
    if model_name is None and ckpt is None:
        contract = aligned_folder_contract(data, size)
    if model_name is not None and ckpt is None:
        from pfpld.models import build_model
        _, _, contract = build_model(model_name)
    if ckpt is not None:
        from pfpld.checkpoint import load_model
        model, record = load_model(ckpt)
        contract, spec = record.contract, record.spec
    summary = make_calibration_set(data, out, n=n, split=split, seed=seed, contract=contract, model=model, spec=spec,
                                   force=force)
    click.echo(summary.line())
    click.echo(f"wrote {out} (image_list.txt, report.md, spread.png)")


def _parse_mean(text: str | None) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise click.BadParameter(f"{text!r}: expected three comma-separated numbers", param_hint="--mean")
    return values  # type: ignore[return-value]


def _parse_output_kinds(texts: tuple[str, ...]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for text in texts:
        name, sep, kind = text.rpartition("=")
        if not sep or not name:
            raise click.BadParameter(f"{text!r}: expected NAME=KIND, e.g. fc1=embedding", param_hint="--output")
        if name in kinds:
            raise click.BadParameter(f"output {name!r} is declared twice", param_hint="--output")
        kinds[name] = kind
    return kinds


class FormatChoice(click.Choice):
    """`--target` choices read from the format registry (convert's and quant's formats) when first needed, so that
    a registered format is a target without touching the CLI."""

    def __init__(self):
        super().__init__([])

    @property
    def choices(self):
        return registered_targets() + ["all"]

    @choices.setter
    def choices(self, value):
        pass


def registered_targets() -> list[str]:
    import convert.export  # noqa: F401  (registers convert's formats)
    import quant  # noqa: F401  (registers quant's formats)
    from convert.formats import target_names
    return target_names()


@main.command()
@click.option("--markdown", is_flag=True, help="Print the README's table (markdown, without the parity column).")
@user_errors
def models(markdown):
    """Every model this pfpld can train and export: input, contract, outputs, loss, metric, export targets, and
    the parity verdict of the newest export of it under the current folder."""
    from pfpld.tables import markdown_table
    from .catalog import ModelRow, model_rows
    rows = model_rows(registered_targets(), root=None if markdown else Path.cwd())
    if markdown:
        click.echo("\n".join(markdown_table(list(ModelRow.COLUMNS[:-1]), [r.cells(False) for r in rows])))
        return
    for row in rows:
        click.echo("\n".join(f"{k:<22} {v}" for k, v in zip(ModelRow.COLUMNS, row.cells())) + "\n")


@main.command("export")
@click.argument("ckpt", required=False, type=click.Path(path_type=Path))
@click.option("--model", help="Build this registry model instead of reading a checkpoint (needs --init random).")
@click.option("--width", type=float, default=1.0, show_default=True, help="Channel width, with --model.")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE", help="Another constructor "
              "option of --model (repeatable), e.g. backbone=mobilenetv2 input_size=112 for hopenet; see `pfpld "
              "models`.")
@click.option("--init", type=click.Choice(["random"]), help="Random weights with randomized BatchNorm statistics "
              "(to try the chain without training).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --init random.")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), help="Start from your own ONNX file.")
@click.option("--target", "targets", multiple=True, type=FormatChoice(), default=("all",), show_default=True,
              help="A format of the registry (repeat for several): each includes what it is made from (caffe and "
              "ncnn include onnx and onnxsim, nnie includes caffe and needs --calib); all = every float format "
              "but ncnn-fp16.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Export folder (written atomically).")
@click.option("--opset", type=click.IntRange(9, 23), default=13, show_default=True, help="ONNX opset of the export "
              "(a given --onnx file keeps its own).")
@click.option("--fp16", is_flag=True, help="Also write ncnn with fp16 weights (same as --target ncnn-fp16).")
@click.option("--force", is_flag=True, help=force_help("export"))
@click.option("--color-order", type=click.Choice(["RGB", "BGR"]), help="Contract of an --onnx file: channel order.")
@click.option("--scale", help="Contract of an --onnx file: input = (pixel - mean) * scale, e.g. 1/255.")
@click.option("--mean", help="Contract of an --onnx file: per-channel mean R,G,B (network channel order).")
@click.option("--crop-expand", type=float, help="Contract of an --onnx file: square side / face box side.")
@click.option("--crop-shift-y", type=float, help="Contract of an --onnx file: crop centre shift, fraction of side.")
@click.option("--crop-box-source", help="Contract of an --onnx file: landmark_extent (the crop is made from a face "
              "box) or aligned (the input is an aligned face, the whole image: recognition models).")
@click.option("--crop-loose-k", type=float, help="Contract of an --onnx file: loosen the face box first as HopeNet "
              "does on 300W-LP (its code: 0.2-0.4; pfpld's hopenet 0.3).  [default: 0, none]")
@click.option("--crop-side", help="Contract of an --onnx file: the square's side is expand x the box's max side "
              "(max) or min side (min: HopeNet's Resize + CenterCrop, expand 224/240).  [default: max]")
@click.option("--output", "output_kinds", multiple=True, metavar="NAME=KIND", help="An --onnx file: what graph output "
              "NAME holds, so parity and int8 judge it in its task's terms: landmarks (x,y pairs in [0,1] of the crop; "
              "NME for 98, 68 or 5 points), pose (yaw,pitch,roll radians), pose_deg, embedding (cosine and "
              "verification accuracy); a HopeNet-style model's three outputs of 66 bin logits as yaw_bins, "
              "pitch_bins and roll_bins (the reference decode, bin index x 3 - 99, is appended as angles_deg). "
              "Repeatable.")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration set (`pfpld calib`): needed by the nnie "
              "target and by --int8.")
@click.option("--precision", type=click.Choice(["int8", "int16", "mixed"]), default="mixed", show_default=True,
              help="nnie: compile_mode 0 / 1 / 2 (mixed: the --hp-layer layers in 16 bit).")
@click.option("--hp-layer", "hp_layers", multiple=True, help="nnie mixed: a Caffe layer to run in 16 bit (default: "
              "the layers producing the outputs). Repeatable.")
@click.option("--allow-layer", "allow_layers", multiple=True, help="nnie preflight: accept this layer type beyond "
              "the NNIE-proven set. Repeatable.")
@click.option("--sdk-dir", type=click.Path(path_type=Path), help="nnie: write the SDK bundle here instead of "
              "OUT/nnie_sdk (replaced under the same --force rule).")
@click.option("--internal-stride", type=click.Choice(["16", "32"]), default="16", show_default=True,
              help="nnie: 16 for DDR3, 32 for DDR4 boards.")
@click.option("--int8", "int8", is_flag=True, help="Also write the int8 formats of the exported ones: onnxruntime QDQ "
              "(onnx-int8) and ncnn int8 (ncnn-int8), calibrated on --calib.")
@click.option("--int8-activations", type=click.Choice(["u8", "s8"]), default="u8", show_default=True,
              help="onnxruntime QDQ activation type (u8 runs faster on x86).")
@click.option("--qdq-prelu", type=click.Choice(["float", "int8"]), default="float", show_default=True,
              help="onnxruntime QDQ of a PReLU network: float leaves a conv output that only a PRelu reads unquantised "
              "(onnxruntime has no integer PReLU: one rounding per activation instead of two; those convs run in "
              "float), int8 quantises it too (faster where most convs feed a PReLU, less accurate; "
              "quant/ort_int8.py has the numbers).")
@user_errors
def export_cmd(ckpt, model, width, model_options, init, seed, onnx_file, targets, out, opset, fp16, force, color_order,
               scale, mean, crop_expand, crop_shift_y, crop_box_source, crop_loose_k, crop_side, output_kinds, calib,
               precision, hp_layers, allow_layers, sdk_dir, internal_stride, int8, int8_activations, qdq_prelu):
    """Export a model to ONNX, Caffe 1.0, ncnn and the quantised formats, with manifest.json (check it with
    `pfpld check-parity`).

    \b
    pfpld export CKPT --target all --out DIR
    pfpld export --model pfpld --width 0.25 --init random --target all --out DIR
    pfpld export --model hopenet --model-option backbone=mobilenetv2 --model-option input_size=112 --width 0.5
                 --init random --target all --out DIR
    pfpld export --onnx model.onnx --color-order RGB --scale 1/255 --target caffe --out DIR
    pfpld export --onnx arcface.onnx --color-order RGB --mean 127.5,127.5,127.5 --scale 1/127.5
                 --crop-box-source aligned --output fc1=embedding --target all --out DIR
    pfpld export --onnx hopenet.onnx --color-order RGB --mean 123.675,116.28,103.53 --scale 1/57.63
                 --crop-loose-k 0.3 --crop-side min --crop-expand 0.9333 --output fc_yaw=yaw_bins
                 --output fc_pitch=pitch_bins --output fc_roll=roll_bins --target all --out DIR
    pfpld export CKPT --target nnie --calib calib_data/NAME --precision mixed --out DIR
    pfpld export CKPT --target ncnn --int8 --calib calib_data/NAME --out DIR
    """
    from convert.export import (export, parse_model_options, source_from_checkpoint, source_from_onnx,
                                source_from_random_init)
    from convert.formats import missing_options, resolve_targets
    from quant.nnie import NnieOptions
    targets = list(targets) + (["ncnn-fp16"] if fp16 else [])
    model = model or ("pfpld" if init else None)
    if sum(v is not None for v in (ckpt, model, onnx_file)) != 1:
        raise click.UsageError("give exactly one source: CKPT, --model NAME --init random, or --onnx FILE")
    contract_options = {"color_order": color_order, "scale": scale, "mean": _parse_mean(mean),
                        "expand": crop_expand, "shift_y": crop_shift_y, "box_source": crop_box_source,
                        "loose_k": crop_loose_k, "side": crop_side}
    if onnx_file is None and (output_kinds or any(v is not None for v in contract_options.values())):
        raise click.UsageError("contract options (--color-order, --scale, ...) and --output apply to --onnx only: a "
                               "checkpoint and a registry model carry their own contract and output kinds")
    if model is not None and init != "random":
        raise click.UsageError("--model needs --init random (trained weights come from a checkpoint: give CKPT)")
    if model_options and model is None:
        raise click.UsageError("--model-option applies to --model NAME --init random (a checkpoint and an ONNX file "
                               "carry their own options)")
    # The option checks come from the registry: what each chosen format requires, and what --int8 adds.
    formats = resolve_targets(targets, with_int8=int8, has_module=onnx_file is None)
    if int8 and not any(f.with_int8_flag for f in formats):
        raise click.UsageError(f"--int8 adds the int8 formats of the exported ones ({', '.join(targets)} has none): "
                               f"add an onnx or ncnn target (nnie is quantised by its mapper)")
    missing = missing_options(formats, {"calib": calib})
    if missing:
        raise click.UsageError(f"{missing[0]} DIR (make one with `pfpld calib`)")
    if ckpt is not None:
        source = source_from_checkpoint(ckpt)
    elif onnx_file is not None:
        source = source_from_onnx(onnx_file, contract_options, _parse_output_kinds(output_kinds))
    else:
        source = source_from_random_init(model, width, seed, parse_model_options(model_options))
    if calib is not None:     # fail before the chain runs: a wrong calibration set is found in a second
        from quant.calibration import read_calibration_set
        read_calibration_set(calib, source.contract)
    if sdk_dir is not None and any(f.name == "nnie" for f in formats):   # and a bundle folder that may not be replaced
        from pfpld.fileio import check_output_folder
        check_output_folder(sdk_dir, "nnie-bundle", force)
    described = " ".join(f"{k}={v}" for k, v in source.spec.options.items())
    click.echo(f"export {source.spec.name}{' ' + described if described else ''} ({source.kind}) -> {out}")
    options = {"calib": calib, "int8_activations": int8_activations, "qdq_prelu": qdq_prelu,
               "nnie": NnieOptions(calib=calib, precision=precision, hp_layers=list(hp_layers),
                                   allow_layers=list(allow_layers), sdk_dir=sdk_dir, force=force,
                                   internal_stride=int(internal_stride)) if calib is not None else None}
    result = export(source, targets, out, opset=opset, with_int8=int8, force=force, log=click.echo, options=options)
    nnie = result.manifest.stage("nnie")
    if nnie is not None:
        info = nnie.info
        bundle = out / info["bundle"] if info["bundle"] == "nnie_sdk" else Path(info["bundle"])
        click.echo(f"NNIE bundle: {bundle} ({info['precision']}, _hp: {', '.join(info['hp_layers']) or 'none'}); "
                   f"see {bundle / 'README.md'}")
    click.echo(f"done in {result.manifest.export_seconds:.2f} s: {out} (manifest.json); "
               f"next: pfpld check-parity {out}")


@main.command("check-parity")
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), help="Face crops, images with boxes.txt, or a prepared "
              "dataset (default: synthetic faces).")
@click.option("--n", type=click.IntRange(min=1), default=8, show_default=True, help="Random inputs, and face crops.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the result as JSON.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--int8", "int8", is_flag=True, help="Also estimate what int8 costs: NNIE simulation, onnxruntime QDQ "
              "and ncnn int8 as NME / pose-MAE deltas against float on held-out labelled faces.")
@click.option("--calib", type=click.Path(path_type=Path), help="--int8: calibration set for stages the export did "
              "not calibrate (default: the export's own ranges).")
@click.option("--heldout", type=click.IntRange(min=1), default=64, show_default=True, help="--int8: held-out faces "
              "(the test split of a prepared --images, else synthetic faces).")
@click.option("--pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="--int8 of a recognition "
              "model: an LFW-format pairs.txt (images under its folder or its lfw/); the verdict is then the "
              "verification accuracy lost (at most 1 point), else the mean embedding cosine vs float (>= 0.99).")
@click.option("--what-if/--no-what-if", default=True, show_default=True, help="--int8: also simulate NNIE at the "
              "precisions the export does not deploy (each costs as long as the deployed one: skip it on thousands "
              "of faces, e.g. real LFW's 7,701).")
@user_errors
def check_parity_cmd(export_dir, images, n, json_out, threads, seed, int8, calib, heldout, pairs, what_if):
    """Run every format of an export (torch -> onnx -> onnxsim -> caffe -> ncnn, ...) on the same inputs; exit code
    1 when a stage misses its tolerance (the first diverging layer is named), when a file no longer matches
    manifest.json, or, with --int8, when a deployed int8 stage costs more than its budget: 0.3 NME points for a
    landmark model, 0.5 degrees of pose MAE for a pose model (judged on the metric the model's task selects on), 1
    point of verification accuracy on --pairs for a recognition model (without pairs: a mean cosine of 0.99)."""
    from convert.parity import check_parity
    report = check_parity(export_dir, images=images, n=n, seed=seed, threads=threads)
    click.echo(report.table())
    click.echo(f"wrote {report.markdown}" + (f", {report.picture}" if report.picture else ""))
    passed = report.passed
    result = report.to_dict()
    if int8:
        from quant.int8 import check_int8
        int8_report = check_int8(export_dir, images=images, calib=calib, n=heldout, seed=seed, threads=threads,
                                 pairs=pairs, what_if=what_if)
        click.echo("")
        click.echo(int8_report.table())
        click.echo(f"wrote {int8_report.markdown}")
        passed = passed and int8_report.passed
        result["int8"] = int8_report.to_dict()
    if json_out:
        write_text_atomic(json_out, json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {json_out}")
    if not passed:
        sys.exit(1)


@main.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Registry model benchmarked with random weights.")
@click.option("--width", "widths", type=float, multiple=True, default=(1.0, 0.25), show_default=True,
              help="Widths of --model with random weights (repeatable).")
@click.option("--ckpt", "ckpts", type=click.Path(path_type=Path), multiple=True, help="A trained checkpoint: replaces "
              "the random weights of its model and width, and measures the accuracy delta (repeatable).")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Prepared dataset whose "
              "test split gives the held-out faces of the accuracy delta (default: synthetic faces).")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration set of the int8 formats (default: 32 "
              "synthetic faces).")
@click.option("--format", "formats", multiple=True, help="Benchmark only these formats (and what they need).")
@click.option("--threads", default="1,2", show_default=True, help="Thread counts of the latency columns.")
@click.option("--budget", type=float, default=1.5, show_default=True, help="Seconds of timing per row and thread "
              "count.")
@click.option("--heldout", type=click.IntRange(min=1), default=256, show_default=True, help="Held-out faces for the "
              "accuracy delta.")
@click.option("--family/--no-family", default=True, show_default=True, help="Also every other registry model, with "
              "random weights at its demo options (`pfpld models`).")
@click.option("--training", is_flag=True, help="Also measure training throughput: the bare step against the "
              "end-to-end `pfpld train` loop.")
@click.option("--cpp-build", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="deploy_cpp build folder holding pfpld_bench, for the C++ ncnn columns (default: the repository's "
              "build/deploy_cpp/host, which `make cpp-test` builds).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/results.md"), show_default=True)
@user_errors
def bench(model, widths, ckpts, data, calib, formats, threads, budget, heldout, family, training, cpp_build, out):
    """One table of every registered format: status, size, parity, accuracy delta, latency at 1 and 2 threads,
    % of the FMA peak, and the ratio to a plain torch.onnx.export measured in the same run."""
    from convert.export import source_from_checkpoint, source_from_random_init
    from .bench import (BenchSettings, cpp_table_rows, format_markdown, run_format_benchmark, table_rows,
                        training_markdown)
    from pfpld.tables import text_table
    try:
        thread_counts = tuple(int(t) for t in threads.split(","))
    except ValueError:
        raise click.BadParameter(f"{threads!r}: expected comma-separated integers", param_hint="--threads")
    registered_targets()
    sources, covered = [], set()
    for ckpt in ckpts:
        source = source_from_checkpoint(ckpt)
        width = source.spec.options.get("width")
        covered.add((source.spec.name, width))
        sources.append((source, f"{source.spec.name} w{width} ({Path(ckpt).name})", True))
    for width in widths:
        if (model, width) not in covered:
            sources.append((source_from_random_init(model, width, seed=0), f"{model} w{width} (random)", False))
    if family:
        from pfpld.models import MODELS
        for name, entry in MODELS.items():
            if name != model and not any(s.spec.name == name for s, _, _ in sources):
                options = dict(entry.demo_options)
                described = " ".join(f"{v}" if k == "backbone" else f"{k[0]}{v}" for k, v in options.items())
                sources.append((source_from_random_init(name, None, seed=0, options=options),
                                f"{name} {described} (random)", False))
    settings = BenchSettings(threads=thread_counts, budget_s=budget, heldout=heldout,
                             formats=tuple(formats) or None)
    if cpp_build is not None:
        settings.cpp_build = cpp_build
    results, peak, how = run_format_benchmark(sources, settings, data=data, calib=calib, log=click.echo)
    header, rows = table_rows(results, thread_counts)
    click.echo("\n".join(text_table([header] + rows)))
    cpp_header, cpp_rows, cpp_notes = cpp_table_rows(results, thread_counts)
    if cpp_rows:
        click.echo("\n" + "\n".join(text_table([cpp_header] + cpp_rows)))
    for note in cpp_notes:
        click.echo(f"C++ ncnn {note}")
    text = "# pfpld benchmark\n\n" + format_markdown(results, peak, how, settings)
    if training:
        text += "\n" + training_markdown(model, tuple(widths), log=click.echo)
    write_text_atomic(out, text)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
