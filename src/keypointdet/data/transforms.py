"""Image + box transforms: the papers' training augmentation (albumentations) and the evaluation transforms
(:class:`Letterbox` to the input size, or :class:`NativeResolution` as the official tests).

Every transform returns the image as a normalised ``[3, H, W]`` float tensor, boxes ``[N, 4]``
xyxy in input pixels (and, given keypoints ``[N, J, 3]``, them in input pixels with their visibility), and
how input pixels relate to original ones: ``input = original * scale + shift`` (per axis, ``scale`` and
``shift`` as ``(x, y)``), which evaluation inverts.

Coordinates are continuous: pixel ``i`` covers ``[i, i + 1)``, so a box edge and the image border agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import Tensor

from keypointdet.boxes import letterbox_size, round_up

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PCA of ImageNet pixel colours (0-1 scale) used by the official CenterNet / CornerNet lighting,
# rows reordered from their BGR images to RGB: row c is channel c's component of each eigenvector.
IMAGENET_EIGENVALUES = (0.2141788, 0.01817699, 0.00348483)
IMAGENET_EIGENVECTORS = (
    (-0.56089297, 0.71832671, 0.41158938),
    (-0.58327470, 0.00994535, -0.81221408),
    (-0.58752847, -0.69563484, 0.41340352),
)
PAPER_SCALES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
# what the crop's scale multiplies: the image's long side (CenterNet) or the input size (CornerNet)
CROP_SIDES = ("long_side", "input_size")


class MirrorJoints(A.HorizontalFlip):
    """Horizontal flip whose keypoints move as boxes do in continuous pixels (``x -> width - x``; albumentations'
    own maps pixel indices, ``width - 1 - x``) and swap left and right: the keypoints are ``J`` rows per object,
    object after object, and row ``j`` of each object takes the mirrored point of joint ``flip_permutation[j]``
    (with its visibility, a label column)."""

    def __init__(self, flip_permutation: Sequence[int], p: float = 0.5) -> None:
        super().__init__(p=p)
        self.flip_permutation = list(flip_permutation)

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        mirrored = keypoints.copy()
        mirrored[:, 0] = params["shape"][1] - keypoints[:, 0]
        num_joints = len(self.flip_permutation)
        return mirrored.reshape(-1, num_joints, keypoints.shape[1])[:, self.flip_permutation].reshape(keypoints.shape)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("flip_permutation",)


def _normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``[H, W, 3]`` RGB -> float ``[3, H, W]`` normalised with ``mean`` / ``std`` (0-1 scale)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return tensor.sub_(mean_t).div_(std_t)


def crop_border(border: int, size: int) -> int:
    """Margin kept between a random crop centre and the image border (official CenterNet ``_get_border``):
    ``border`` halved until fewer than half of ``size`` pixels lie within it."""
    divisor = 1
    while size - border // divisor <= border // divisor:
        divisor *= 2
    return border // divisor


class RandomScaleCrop(A.DualTransform):
    """The papers' random crop: a square of side ``scale * reference`` (``scale`` drawn from ``scales``)
    centred at a random point at least :func:`crop_border` ``(border, size)`` away from each border,
    warped to ``size x size`` in one affine warp; what falls outside the image is ``fill``.

    ``crop_side="long_side"`` (official CenterNet) scales the image's long side; ``"input_size"`` (official
    CornerNet ``random_crop``) scales ``size``, so objects keep their pixel size at scale 1.

    Boxes follow the same map; the ``BboxParams`` of the pipeline clip them and drop degenerate ones.
    """

    def __init__(
        self,
        size: int,
        scales: Sequence[float] = PAPER_SCALES,
        border: int = 128,
        fill: Sequence[float] = (0.0, 0.0, 0.0),
        crop_side: str = "long_side",
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if crop_side not in CROP_SIDES:
            raise ValueError(f"crop_side must be one of {CROP_SIDES}, got {crop_side!r}")
        self.size, self.scales, self.border, self.fill = size, tuple(scales), border, tuple(fill)
        self.crop_side = crop_side

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        reference = max(height, width) if self.crop_side == "long_side" else self.size
        side = reference * self.py_random.choice(self.scales)
        x_border, y_border = crop_border(self.border, width), crop_border(self.border, height)
        centre_x = self.py_random.randrange(x_border, width - x_border)
        centre_y = self.py_random.randrange(y_border, height - y_border)
        zoom = self.size / side
        # continuous coordinates: output = zoom * input + shift
        shift = (self.size / 2 - zoom * centre_x, self.size / 2 - zoom * centre_y)
        return {"zoom": zoom, "crop_shift": shift}

    def apply(self, img: np.ndarray, zoom: float, crop_shift: tuple[float, float], **params: Any) -> np.ndarray:
        # OpenCV maps pixel centres: centre i sits at continuous i + 0.5, hence the half-pixel terms.
        half = 0.5 * (zoom - 1)
        matrix = np.array([[zoom, 0, crop_shift[0] + half], [0, zoom, crop_shift[1] + half]], dtype=np.float64)
        return cv2.warpAffine(
            img,
            matrix,
            (self.size, self.size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=self.fill,
        )

    def apply_to_bboxes(
        self, bboxes: np.ndarray, zoom: float, crop_shift: tuple[float, float], **params: Any
    ) -> np.ndarray:
        """``bboxes [N, 4 + extra]`` normalised to the input image -> normalised to the output square."""
        height, width = params["shape"][:2]
        out = bboxes.copy()
        out[:, [0, 2]] = (bboxes[:, [0, 2]] * width * zoom + crop_shift[0]) / self.size
        out[:, [1, 3]] = (bboxes[:, [1, 3]] * height * zoom + crop_shift[1]) / self.size
        return out

    def apply_to_keypoints(
        self, keypoints: np.ndarray, zoom: float, crop_shift: tuple[float, float], **params: Any
    ) -> np.ndarray:
        """``keypoints [N, 2 + extra]`` (x, y first) in input pixels -> output pixels."""
        out = keypoints.copy()
        out[:, :2] = keypoints[:, :2] * zoom + np.asarray(crop_shift)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "scales", "border", "fill", "crop_side")


class FixedPCALighting(A.ImageOnlyTransform):
    """AlexNet-style PCA lighting with fixed dataset eigenvectors, as in the official repos:
    ``image += eigenvectors @ (eigenvalues * alpha)`` (0-1 scale), ``alpha ~ N(0, alpha_std^2)`` per image.

    Unlike albumentations' ``FancyPCA``, which computes a PCA of every image, this costs one lookup
    table per image: on uint8 the shift of each channel is a clipped per-value LUT.
    """

    def __init__(
        self,
        alpha_std: float = 0.1,
        eigenvalues: Sequence[float] = IMAGENET_EIGENVALUES,
        eigenvectors: Sequence[Sequence[float]] = IMAGENET_EIGENVECTORS,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.alpha_std = alpha_std
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        self.eigenvectors = np.asarray(eigenvectors, dtype=np.float64)

    def get_params(self) -> dict[str, Any]:
        alpha = self.random_generator.normal(0.0, self.alpha_std, size=3)
        return {"colour_shift": self.eigenvectors @ (self.eigenvalues * alpha)}

    def apply(self, img: np.ndarray, colour_shift: np.ndarray, **params: Any) -> np.ndarray:
        """``img [H, W, 3]`` uint8 RGB -> the same with ``255 * colour_shift[c]`` added to channel ``c``."""
        values = np.arange(256, dtype=np.float64)[:, None] + 255 * colour_shift[None, :]
        table = np.clip(np.rint(values), 0, 255).astype(np.uint8).reshape(1, 256, 3)
        return cv2.LUT(img, table)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("alpha_std", "eigenvalues", "eigenvectors")


class TrainTransform:
    """Training augmentation of the CenterNet / CornerNet recipe, with boxes kept in step.

    :class:`RandomScaleCrop` to an ``input_size`` square (random scale of the long side, random centre
    away from the border), horizontal flip, brightness / contrast / saturation jitter in random order,
    :class:`FixedPCALighting`, normalisation. Padding is the mean colour (0 after normalisation, like
    the evaluation letterbox). Boxes are clipped to the image; those left under 1 pixel^2 are dropped
    with their labels (and keypoints). Keypoints follow the geometry (those leaving the image are kept, the
    encoder ignores them); the flip swaps each object's left and right joints (:class:`MirrorJoints`).

    Args:
        scales: crop side as a fraction of ``crop_side``, drawn uniformly from these.
        border: crop centre margin of :func:`crop_border` (128 in the official code).
        crop_side: ``"long_side"`` (CenterNet) or ``"input_size"`` (CornerNet), see :class:`RandomScaleCrop`.
        flip: probability of a horizontal flip.
        color_jitter: brightness, contrast and saturation factors drawn from ``[1 - j, 1 + j]``.
        lighting: standard deviation of the PCA lighting coefficients (0 disables it).
        flip_permutation: of a keypoint dataset, the joint each joint becomes when flipped
            (:meth:`~keypointdet.data.keypoints.KeypointSet.flip_permutation`); ``None``: boxes only.
    """

    def __init__(
        self,
        input_size: int,
        scales: Sequence[float] = PAPER_SCALES,
        border: int = 128,
        flip: float = 0.5,
        color_jitter: float = 0.4,
        lighting: float = 0.1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_side: str = "long_side",
        flip_permutation: Sequence[int] | None = None,
    ) -> None:
        mean_colour = tuple(255 * m for m in mean)
        self.num_joints = len(flip_permutation) if flip_permutation is not None else 0
        mirror = A.HorizontalFlip(p=flip) if flip_permutation is None else MirrorJoints(flip_permutation, p=flip)
        steps: list[A.BasicTransform] = [
            RandomScaleCrop(input_size, scales, border, fill=mean_colour, crop_side=crop_side),
            mirror,
            A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0, p=1.0),
        ]
        if lighting > 0:
            steps.append(FixedPCALighting(lighting))
        steps += [A.Normalize(mean=mean, std=std), ToTensorV2()]
        self.pipeline = A.Compose(
            steps,
            bbox_params=A.BboxParams(
                format="pascal_voc", label_fields=["labels", "objects"], clip=True, filter_invalid_bboxes=True,
                min_area=1.0,
            ),
            keypoint_params=A.KeypointParams(format="xy", label_fields=["visibility"], remove_invisible=False),
        )

    def set_random_seed(self, seed: int) -> None:
        """Restart the random streams from ``seed``, an independent one per step (albumentations'
        ``Compose.set_random_seed`` gives every step the same seed, which correlates their draws; the
        Compose's own stream only decides whether to run, with probability 1)."""
        streams = np.random.SeedSequence(seed).generate_state(len(self.pipeline.transforms))
        for transform, stream in zip(self.pipeline.transforms, streams):
            transform.set_random_seed(int(stream))

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, keypoints: np.ndarray | None = None
    ) -> dict[str, Any]:
        """``image [H, W, 3]`` uint8 RGB, ``boxes [N, 4]`` xyxy, ``labels [N]`` (``keypoints [N, J, 3]`` x, y,
        visibility of a keypoint dataset) -> augmented sample."""
        boxes = boxes.reshape(-1, 4)
        joints = np.zeros((len(boxes), self.num_joints, 3)) if keypoints is None else keypoints
        out = self.pipeline(
            image=image, bboxes=boxes, labels=labels, objects=np.arange(len(boxes)),
            keypoints=joints[..., :2].reshape(-1, 2), visibility=joints[..., 2].reshape(-1),
        )  # fmt: skip
        sample = {
            "image": out["image"],
            "boxes": np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4),
            "labels": np.asarray(out["labels"], dtype=np.int64).reshape(-1),
        }
        if keypoints is not None:
            points = np.asarray(out["keypoints"], dtype=np.float64)[:, :2]
            moved = np.concatenate([points, np.asarray(out["visibility"], dtype=np.float64)[:, None]], axis=1)
            kept = np.asarray(out["objects"], dtype=np.int64)
            sample["keypoints"] = moved.reshape(len(boxes), self.num_joints, 3)[kept]
        return sample


class EvaluationTransform:
    """Shared part of the deterministic evaluation transforms: normalisation, and the sample they return."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean, self.std = mean, std

    def set_random_seed(self, seed: int) -> None:
        """Deterministic: nothing to seed."""

    @staticmethod
    def sample(
        canvas: Tensor, boxes: np.ndarray, labels: np.ndarray, scale: np.ndarray, shift: np.ndarray,
        keypoints: np.ndarray | None = None,
    ) -> dict:  # fmt: skip
        """The network input ``canvas``, boxes (and keypoints ``[N, J, 3]``) mapped to it by
        ``input = original * scale + shift``, the mapping."""
        boxes = boxes.reshape(-1, 4) * np.tile(scale, 2) + np.tile(shift, 2)
        sample = {"image": canvas, "boxes": boxes, "labels": labels, "scale": scale, "shift": shift}
        if keypoints is not None:
            points = keypoints[..., :2] * scale + shift
            sample["keypoints"] = np.concatenate([points, keypoints[..., 2:]], axis=-1)
        return sample


class Letterbox(EvaluationTransform):
    """Evaluation transform: resize the long side to ``input_size`` at the image's aspect ratio,
    pad bottom / right to a multiple of ``size_divisor``, and record the mapping."""

    def __init__(
        self, input_size: int, size_divisor: int = 32, mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:  # fmt: skip
        super().__init__(mean, std)
        self.input_size, self.size_divisor = input_size, size_divisor

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, keypoints: np.ndarray | None = None
    ) -> dict[str, Any]:
        """``image [H, W, 3]`` uint8 RGB -> padded image, boxes (keypoints) in input pixels, ``scale``, ``shift``."""
        height, width = image.shape[:2]
        new_height, new_width = letterbox_size(height, width, self.input_size)
        resized = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
        padded_height, padded_width = round_up(new_height, self.size_divisor), round_up(new_width, self.size_divisor)
        # Zero after normalisation is the mean colour, the same as the training padding.
        canvas = torch.zeros((3, padded_height, padded_width))
        canvas[:, :new_height, :new_width] = _normalise(resized, self.mean, self.std)
        scale = np.array([new_width / width, new_height / height])
        return self.sample(canvas, boxes, labels, scale, np.zeros(2), keypoints)


# How the evaluation transform resizes (``data.eval_resize``): the long side to ``input_size``, or not at all.
EVAL_RESIZES = ("letterbox", "native")


def native_canvas_side(side: int, multiple: int, minus_one: bool = False) -> int:
    """The official test's padded side of an image side: the smallest multiple of ``multiple`` above ``side``
    (CenterNet ``--keep_res``: ``(side | (multiple - 1)) + 1``), minus one with ``minus_one`` (CornerNet:
    ``side | 127``). Note a side that is already a multiple still gets a whole ``multiple`` of padding."""
    return round_up(side + 1, multiple) - int(minus_one)


class NativeResolution(EvaluationTransform):
    """Evaluation transform of the official tests: the image at its own resolution, centred in a zero canvas
    of :func:`native_canvas_side` per axis (offset ``canvas // 2 - side // 2``, as the official
    ``get_affine_transform`` / ``crop_image``), with ``scale = 1`` and that offset as ``shift`` recorded."""

    def __init__(self, multiple: int = 32, minus_one: bool = False, **normalisation: Sequence[float]) -> None:
        """``normalisation``: ``mean``, ``std`` of :class:`EvaluationTransform`."""
        super().__init__(**normalisation)
        self.multiple, self.minus_one = multiple, minus_one

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, keypoints: np.ndarray | None = None
    ) -> dict[str, Any]:
        """``image [H, W, 3]`` uint8 RGB -> centred in its canvas, boxes (keypoints) in input pixels, ``scale``,
        ``shift``."""
        height, width = image.shape[:2]
        canvas_height = native_canvas_side(height, self.multiple, self.minus_one)
        canvas_width = native_canvas_side(width, self.multiple, self.minus_one)
        top, left = canvas_height // 2 - height // 2, canvas_width // 2 - width // 2
        canvas = torch.zeros((3, canvas_height, canvas_width))
        canvas[:, top : top + height, left : left + width] = _normalise(image, self.mean, self.std)
        return self.sample(canvas, boxes, labels, np.ones(2), np.array([left, top], dtype=np.float64), keypoints)
