"""The training augmentation (FACTS section 4): one draw per face, applied by two paths that agree.

PreparedFaces draws each face's AugmentDraw from a generator seeded by (seed, epoch, index) and hands over the raw
stored crop with it. augment_batch() then applies the draws of a whole batch with torch tensor ops on the training
device (CPU or CUDA, the same code): one bilinear warp for rotation, scale, shift and mirror, colour jitter,
random grayscale and random erasing, then the contract's colour order, mean and scale. augment_sample() is the
per-sample reference on one face with cv2 and numpy, what training ran before; tests/test_augment.py holds the
two together. The label maths (points, mask, pose, the Mirror98 remap) is one set of functions for both paths
(pfpld.arrays). Without a draw both give exactly the contract crop, the centre window of the stored crop.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..arrays import asarray_like, namespace, stack_matrix
from ..contract import PreprocessContract
from ..landmarks import flip_mask, flip_points, flip_pose, mirror_matrix
from ..pose import pose_after_image_transform


@dataclass(frozen=True)
class AugmentConfig:
    """FACTS section 4: the reference PFPLD augmentation (erasing as torchvision's RandomErasing defaults)."""
    rotation_deg: float = 30.0
    shift_frac: float = 0.1
    scale_range: tuple[float, float] = (0.9, 1.1)
    flip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.2
    grayscale_p: float = 0.2
    erasing_p: float = 0.2
    erasing_area: tuple[float, float] = (0.02, 0.33)     # of the input's area
    erasing_aspect: tuple[float, float] = (0.3, 3.3)     # height / width, drawn log-uniform


@dataclass(frozen=True)
class AugmentDraw:
    """Everything random about one face's augmentation. For a batch the same record holds (B,) tensors, one per
    field (AugmentDraw.of_batch): the loader carries draws as float64 vectors (to_vector), every value exact."""
    rotation_rad: float
    scale: float
    shift_x_px: float           # of the input
    shift_y_px: float
    flip: bool                  # mirror after the similarity
    brightness: float           # factors
    contrast: float
    saturation: float
    hue_steps: int              # added to cv2's 8-bit hue (units of 2 degrees); 0: no hue change
    grayscale: bool
    erase_y: int                # the erased rectangle in input pixels; erase_h == 0: no erasing
    erase_x: int
    erase_h: int
    erase_w: int
    erase_seed: int             # of the erasing noise, see erase_noise

    def to_vector(self) -> np.ndarray:
        return np.array([float(getattr(self, f.name)) for f in fields(self)], dtype=np.float64)

    @classmethod
    def of_batch(cls, vectors: torch.Tensor) -> AugmentDraw:
        """(B, n_fields) stacked to_vector rows -> one record of (B,) tensors (bool, int64 or float64)."""
        kinds = {"bool": lambda c: c != 0, "int": lambda c: c.long(), "float": lambda c: c.double()}
        return cls(**{f.name: kinds[f.type](column) for f, column in zip(fields(cls), vectors.unbind(-1))})


def draw_augment(rng: np.random.Generator, cfg: AugmentConfig, input_size: int) -> AugmentDraw:
    """One face's draw, in the order the draws were always made (a seed gives the same geometry and colours)."""
    rotation = np.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    scale = rng.uniform(*cfg.scale_range)
    shift = rng.uniform(-cfg.shift_frac, cfg.shift_frac, size=2) * input_size
    flip = rng.random() < cfg.flip_p
    brightness = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    saturation = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    hue_steps = round(rng.uniform(-cfg.hue, cfg.hue) * 180.0)
    grayscale = rng.random() < cfg.grayscale_p
    erase = (0, 0, 0, 0, 0)
    if rng.random() < cfg.erasing_p:
        area = rng.uniform(*cfg.erasing_area) * input_size * input_size
        aspect = np.exp(rng.uniform(*np.log(cfg.erasing_aspect)))
        eh, ew = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < eh < input_size and 0 < ew < input_size:
            y, x = int(rng.integers(0, input_size - eh)), int(rng.integers(0, input_size - ew))
            erase = (y, x, eh, ew, int(rng.integers(0, 2**31)))
    return AugmentDraw(float(rotation), float(scale), float(shift[0]), float(shift[1]), bool(flip),
                       float(brightness), float(contrast), float(saturation), hue_steps, bool(grayscale), *erase)


@dataclass(frozen=True)
class FaceLabels:
    """Labels in [0,1] of the contract crop: points (..., 98, 2), mask (..., 98), pose (..., 3) yaw, pitch, roll
    in radians, has_pose (...). numpy arrays for one face, torch tensors for a batch."""
    points: Any
    mask: Any
    pose: Any
    has_pose: Any


# --- geometry and labels: one implementation for numpy and torch ---------------------------------------------

def similarity_matrix(draw: AugmentDraw, crop_size_px: int, input_size: int):
    """(..., 2, 3) float64 matrix from the stored crop's pixels to the input's: rotation and scale about the
    centres, then the shift (pixel centres at integer coordinates, as cv2.warpAffine and the contract)."""
    xp = namespace(draw.rotation_rad)
    c = xp.cos(draw.rotation_rad) * draw.scale
    s = xp.sin(draw.rotation_rad) * draw.scale
    src_c, dst_c = (crop_size_px - 1) / 2.0, (input_size - 1) / 2.0
    tx = dst_c + draw.shift_x_px - (c * src_c - s * src_c)
    ty = dst_c + draw.shift_y_px - (s * src_c + c * src_c)
    return stack_matrix(xp, [[c, -s, tx], [s, c, ty]])


def warp_matrix(draw: AugmentDraw, crop_size_px: int, input_size: int):
    """The one resampling of the image: the similarity, then mirror_matrix where the draw flips (warping and then
    flipping the array would round differently)."""
    m = similarity_matrix(draw, crop_size_px, input_size)
    xp = namespace(m)
    mirror = asarray_like(mirror_matrix(input_size), m)
    mirrored = mirror[:, :2] @ m + mirror[:, 2:] * asarray_like([0.0, 0.0, 1.0], m)
    return xp.where(xp.asarray(draw.flip)[..., None, None], mirrored, m)


def transform_labels(labels: FaceLabels, draw: AugmentDraw, crop_size_px: int, input_size: int) -> FaceLabels:
    """The labels after the draw's similarity, then mirror with the Mirror98 remap (flip_points, flip_mask,
    flip_pose); the pose through the rotation matrix (pose_after_image_transform), only where there is one."""
    xp = namespace(labels.points)
    m = similarity_matrix(draw, crop_size_px, input_size)
    offset = (crop_size_px - input_size) / 2.0
    points_px = xp.asarray(labels.points, dtype=xp.float64) * input_size + offset     # in the stored crop
    points = (points_px @ m[..., :2].swapaxes(-1, -2) + m[..., None, :, 2]) / input_size
    pose = xp.asarray(labels.pose, dtype=xp.float64)
    pose = xp.where(xp.asarray(labels.has_pose)[..., None], pose_after_image_transform(pose, m[..., :2]), pose)
    flip = xp.asarray(draw.flip)
    return FaceLabels(
        points=xp.asarray(xp.where(flip[..., None, None], flip_points(points, input_size), points),
                          dtype=xp.float32),
        mask=xp.where(flip[..., None], flip_mask(labels.mask), labels.mask),
        pose=xp.asarray(xp.where(flip[..., None], flip_pose(pose), pose), dtype=xp.float32),
        has_pose=labels.has_pose)


_MASK32 = 0xFFFFFFFF


def _mix32(h):
    """A 32-bit integer hash (xorshift-multiply; odd multipliers below 2^31 keep int64 products from
    overflowing)."""
    h = ((h ^ (h >> 16)) * 0x21F0AAAD) & _MASK32
    h = ((h ^ (h >> 15)) * 0x735A2D97) & _MASK32
    return h ^ (h >> 15)


def erase_noise(seed, row, column, channel):
    """The random-erasing noise, uniform integers 0-255 (int64): a pure function of the draw's erase_seed and the
    pixel (row, column, BGR channel, crops up to 4096 px), so the numpy reference and a torch device compute
    the same values without drawing them."""
    return _mix32(_mix32(seed) ^ ((row * 4096 + column) * 4 + channel)) >> 24


# --- the per-sample reference: cv2 and numpy --------------------------------------------------------------

def augment_sample(crop_bgr: np.ndarray, labels: FaceLabels, draw: AugmentDraw | None,
                   contract: PreprocessContract) -> tuple[np.ndarray, FaceLabels]:
    """One stored crop (S, S, 3) uint8 BGR and its labels -> the network input (3, H, W) float32 and the labels
    after augmentation, with cv2. Without a draw: the contract crop (the centre window), labels unchanged."""
    size = contract.input_size
    crop_size_px = crop_bgr.shape[0]
    if draw is None:
        offset = (crop_size_px - size) // 2
        return contract.to_tensor_layout(crop_bgr[offset:offset + size, offset:offset + size]), labels
    out = cv2.warpAffine(crop_bgr, warp_matrix(draw, crop_size_px, size), (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT)
    return (contract.to_tensor_layout(photometric_reference(out, draw)),
            transform_labels(labels, draw, crop_size_px, size))


def photometric_reference(bgr: np.ndarray, draw: AugmentDraw) -> np.ndarray:
    """Colour jitter (brightness, contrast about the mean grey, saturation, hue), grayscale and erasing of one
    uint8 BGR image, with cv2's 8-bit colour conversions; uint8 (truncated) between the steps."""
    img = bgr.astype(np.float32)
    img *= draw.brightness
    gray_mean = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY).mean()
    img = (img - gray_mean) * draw.contrast + gray_mean
    img = np.clip(img, 0, 255).astype(np.uint8)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)[..., None]
    img = np.clip(gray + (img.astype(np.float32) - gray) * draw.saturation, 0, 255).astype(np.uint8)
    if draw.hue_steps:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + draw.hue_steps) % HUE_STEPS).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if draw.grayscale:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if draw.erase_h:
        rows, columns, channels = np.ogrid[draw.erase_y:draw.erase_y + draw.erase_h,
                                           draw.erase_x:draw.erase_x + draw.erase_w, 0:3]
        img = img.copy()
        img[draw.erase_y:draw.erase_y + draw.erase_h, draw.erase_x:draw.erase_x + draw.erase_w] = \
            erase_noise(np.int64(draw.erase_seed), rows, columns, channels).astype(np.uint8)
    return img


# --- the batched path: torch on the training device --------------------------------------------------------

# On the CPU a batch is augmented in chunks of this many images, side by side on single-threaded workers (one per
# intra-op thread), instead of with torch's intra-op parallelism: a chunk's intermediates stay in the caches
# (measured on 2 cores: 64 faces take 30-45 ms in chunks of 8 to 24, 65 ms in one piece), and the few hundred
# small ops of a batch do not each synchronise the OpenMP threads, which costs milliseconds per op as soon as
# another process shares the cores (measured with another training running: 85 ms instead of 0.2 to 3 s per
# 64 faces). A GPU takes the whole batch at once.
CPU_CHUNK = 16


@functools.cache
def _cpu_workers(threads: int) -> ThreadPoolExecutor:
    """`threads` workers whose tensor ops run single-threaded: torch releases the GIL inside each op. Each
    worker's thread count is its own (OpenMP's is per thread), so the training step keeps all of its own."""
    return ThreadPoolExecutor(max_workers=threads, initializer=torch.set_num_threads, initargs=(1,),
                              thread_name_prefix="pfpld-augment")


def augment_batch(crops: torch.Tensor, labels: FaceLabels, draws: torch.Tensor | None,
                  contract: PreprocessContract) -> tuple[torch.Tensor, FaceLabels]:
    """A batch of stored crops (B, S, S, 3) uint8 BGR, their labels (tensors) and draws (B, n_fields) float64
    (AugmentDraw.to_vector rows), all on the training device -> the network input (B, 3, H, W) float32 and the
    labels after augmentation. Without draws: the contract crops (centre windows), labels unchanged, the same
    bits as augment_sample."""
    size = contract.input_size
    crop_size_px = crops.shape[1]
    if draws is None:
        offset = (crop_size_px - size) // 2
        window = crops[:, offset:offset + size, offset:offset + size]
        return contract.normalise(window.permute(0, 3, 1, 2).float()), labels
    if crops.device.type == "cpu":
        def chunk(i: int) -> torch.Tensor:
            return augment_images(crops[i:i + CPU_CHUNK], AugmentDraw.of_batch(draws[i:i + CPU_CHUNK]), contract)
        # torch.get_num_threads() first: it fixes this thread's own count before any worker sets its own
        image = torch.cat(list(_cpu_workers(torch.get_num_threads()).map(chunk, range(0, len(crops), CPU_CHUNK))))
    else:
        image = augment_images(crops, AugmentDraw.of_batch(draws), contract)
    return image, transform_labels(labels, AugmentDraw.of_batch(draws), crop_size_px, size)


def augment_images(crops: torch.Tensor, draw: AugmentDraw, contract: PreprocessContract) -> torch.Tensor:
    """Stored crops (B, S, S, 3) uint8 BGR and their draws (a record of (B,) tensors) -> network input."""
    size = contract.input_size
    image = warp_batch(crops, warp_matrix(draw, crops.shape[1], size), size)
    return contract.normalise(photometric_batch(image, draw))


def warp_batch(crops: torch.Tensor, warp: torch.Tensor, size: int) -> torch.Tensor:
    """cv2.warpAffine (INTER_LINEAR, BORDER_CONSTANT 0) of each (S, S, 3) uint8 crop by its 2x3 matrix `warp`
    (B, 2, 3), crop pixels -> output pixels, pixel centres at integer coordinates -> (B, 3, size, size) float32
    rounded to whole grey levels as cv2's uint8 output is. cv2 quantises the sampling position to 1/32 pixel and
    the weights to 15 bits; this samples exactly."""
    crop_size_px = crops.shape[1]
    inverse = torch.linalg.inv(warp[:, :, :2])
    source_origin = -(inverse @ warp[:, :, 2:])[..., 0]         # the crop point that output pixel (0, 0) samples
    # grid_sample's coordinates with align_corners=True: pixel p of n is p / k - 1, k = (n - 1) / 2.
    k = (crop_size_px - 1) / 2.0
    step = (inverse / k).float()                                 # per output column (x) and row (y)
    origin = (source_origin / k - 1.0).float()
    pixels = torch.arange(size, device=crops.device, dtype=torch.float32)
    grid = torch.empty(crops.shape[0], size, size, 2, device=crops.device)
    for axis in (0, 1):        # grid[b, y, x, axis] = x * step[b, axis, 0] + (y * step[b, axis, 1] + origin[b, axis])
        along_rows = pixels[None, :, None] * step[:, axis, 1, None, None] + origin[:, axis, None, None]
        torch.add(along_rows, pixels[None, None, :] * step[:, axis, 0, None, None], out=grid[..., axis])
    planes = crops.permute(0, 3, 1, 2).float()                   # channels-last strides: no copy
    out = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.round_()


def photometric_batch(x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    """photometric_reference on a batch (B, 3, H, W) of whole grey levels in BGR order (changed in place), with
    per-face draws: the same steps, the same truncation to whole levels between them, cv2's gray and 8-bit HSV
    arithmetic. Selections are sums of 0/1-masked terms or whole-face indexing: exact, and much faster than
    torch.where on the CPU."""
    def per_face(values):
        return values.to(x.dtype)[:, None, None, None]

    x.mul_(per_face(draw.brightness))
    gray_mean = gray_levels(x.clamp(0.0, 255.0).floor_()).sum(dim=(1, 2, 3), dtype=torch.float64)
    gray_mean = per_face(gray_mean / (x.shape[2] * x.shape[3]))
    x.sub_(gray_mean).mul_(per_face(draw.contrast)).add_(gray_mean).clamp_(0.0, 255.0).floor_()
    gray = gray_levels(x)
    x.sub_(gray).mul_(per_face(draw.saturation)).add_(gray).clamp_(0.0, 255.0).floor_()
    hue = torch.nonzero(draw.hue_steps != 0)[:, 0]
    if len(hue) == len(x):                      # the usual case: no gather and scatter of the whole batch
        x = shift_hue(x, draw.hue_steps)
    elif len(hue):
        x[hue] = shift_hue(x[hue], draw.hue_steps[hue])
    grayscale = torch.nonzero(draw.grayscale)[:, 0]
    if len(grayscale):
        x[grayscale] = gray_levels(x[grayscale]).expand(-1, 3, -1, -1)
    erased = torch.nonzero(draw.erase_h > 0)[:, 0]
    boxes = torch.stack([erased, draw.erase_y[erased], draw.erase_x[erased], draw.erase_h[erased],
                         draw.erase_w[erased]], dim=1).tolist()         # one device -> host copy for the loop
    for i, y0, x0, h, w in boxes:
        rows = torch.arange(y0, y0 + h, device=x.device)[None, :, None]
        columns = torch.arange(x0, x0 + w, device=x.device)[None, None, :]
        channels = torch.arange(3, device=x.device)[:, None, None]
        x[i, :, y0:y0 + h, x0:x0 + w] = erase_noise(draw.erase_seed[i], rows, columns, channels).to(x.dtype)
    return x


# cv2's 8-bit BGR -> gray: 15-bit fixed point, rounded (0.114, 0.587, 0.299 x 2^15).
GRAY_WEIGHTS_Q15 = (3735, 19235, 9798)
GRAY_SHIFT = 15


def gray_levels(x: torch.Tensor) -> torch.Tensor:
    """cv2.COLOR_BGR2GRAY of (B, 3, H, W) whole grey levels -> (B, 1, H, W), exactly (every partial sum is an
    integer below 2^24, exact in float32)."""
    wb, wg, wr = GRAY_WEIGHTS_Q15
    fixed = x[:, 0:1] * wb
    fixed.add_(x[:, 1:2], alpha=wg).add_(x[:, 2:3], alpha=wr).add_(1 << (GRAY_SHIFT - 1))
    return fixed.mul_(1.0 / (1 << GRAY_SHIFT)).floor_()


# cv2's 8-bit HSV: hue in 180 steps of 2 degrees; RGB2HSV_b divides with 12-bit fixed-point tables.
HUE_STEPS = 180
HSV_SHIFT = 12


def _mask(a: torch.Tensor, b) -> torch.Tensor:
    """(a == b) as float 0/1 (written directly: a bool mask converted afterwards costs ten times more)."""
    return torch.eq(a, b, out=torch.empty_like(a))


def _fixed_point_scale(a: torch.Tensor, numerator: float, divisor: torch.Tensor) -> torch.Tensor:
    """cv2's (a * round(numerator / divisor) + 2^11) >> 12 for whole numbers, exactly in float32: the float32
    quotient rounds to cv2's double table value, and with |a| <= 5 divisor no product reaches 2^24."""
    table = torch.round(numerator / divisor.clamp(min=1.0))
    return table.mul_(a).add_(1 << (HSV_SHIFT - 1)).mul_(1.0 / (1 << HSV_SHIFT)).floor_()


def shift_hue(x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """cv2 BGR -> 8-bit HSV, hue + steps (mod 180), -> BGR, on (B, 3, H, W) whole grey levels. BGR2HSV as cv2's
    integer code (exact: every intermediate is a whole number below 2^24); HSV2BGR as cv2's vector code computes
    it (float32, truncated to uint8; cv2's scalar code, which finishes rows whose width is not a multiple of its
    vector size, rounds instead: those pixels may differ by one level)."""
    b, g, r = x[:, 0], x[:, 1], x[:, 2]
    v = torch.maximum(torch.maximum(b, g), r)
    diff = torch.minimum(torch.minimum(b, g), r).neg_().add_(v)
    s = _fixed_point_scale(diff, 255.0 * (1 << HSV_SHIFT), v)
    # cv2's hue numerator: g - b where v == r, else b - r + 2 diff where v == g, else r - g + 4 diff (whole
    # numbers, so the 0/1 blends are exact)
    numerator = (r - g).add_(diff, alpha=4.0)
    numerator.add_(((b - r).add_(diff, alpha=2.0).sub_(numerator)).mul_(_mask(v, g)))
    numerator.add_(((g - b).sub_(numerator)).mul_(_mask(v, r)))
    h = _fixed_point_scale(numerator, HUE_STEPS * (1 << HSV_SHIFT) / 6.0, diff)
    h.add_(steps.to(x.dtype)[:, None, None])
    # mod 180 (also lifts cv2's negative hues): h is a whole number in [-66, 186], so the float32 floor of
    # h / 180 is exact; torch.remainder costs three times more
    h.sub_(torch.floor(h * np.float32(1.0 / HUE_STEPS)).mul_(HUE_STEPS)).mul_(np.float32(6.0 / HUE_STEPS))
    sector = torch.floor(h)
    f = h.sub_(sector)
    s.mul_(np.float32(1.0 / 255.0))
    v.mul_(np.float32(1.0 / 255.0))
    t1 = torch.rsub(s, 1.0).mul_(v)                        # v (1 - s)
    t2 = torch.rsub(s * f, 1.0).mul_(v)                    # v (1 - s f)
    t3 = torch.rsub(torch.rsub(f, 1.0).mul_(s), 1.0).mul_(v)  # v (1 - s (1 - f))
    table = (v, t1, t2, t3)
    sector_is = [_mask(sector, k) for k in range(6)]
    out = torch.empty_like(x)
    for channel, picks in enumerate(SECTOR_BGR_BY_CHANNEL):
        # the one active sector's pick; the other terms are exact zeros
        torch.mul(table[picks[0]], sector_is[0], out=out[:, channel])
        for sector_index in range(1, 6):
            out[:, channel].addcmul_(table[picks[sector_index]], sector_is[sector_index])
    return out.mul_(255.0).floor_()


# HSV -> BGR: which of v, v(1-s), v(1-s f), v(1-s(1-f)) channel b, g, r takes in each of the six 60-degree
# sectors (cv2's sector table, read by channel).
SECTOR_BGR_BY_CHANNEL = ((1, 1, 3, 0, 0, 2), (3, 0, 0, 2, 1, 1), (0, 2, 1, 1, 3, 0))
