"""LightningModules: a shared keypoint-detector base (optimisation, evaluation, logging) and CenterNet.

A detector is a backbone returning one feature map per stack, one head per stack, a loss of the
raw maps, a decoder of the last stack's maps, and the target encoder its data needs.

Checkpoints rebuild themselves: the backbone is given as its Hydra config (``conf/model/*.yaml``
pass ``${backbone}`` un-instantiated), which is saved with the other hyper-parameters, and the
detector's class path is saved under ``detector_class`` (see :func:`keypointdet.inference.load_detector`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from keypointdet.data.encode import CenterNetEncoder, CornerNetEncoder
from keypointdet.decode import (
    centernet_decode,
    centernet_decode_scores,
    cornernet_decode,
    cornernet_pairs,
    mirror_boxes,
    soft_nms,
)
from keypointdet.evaluation import CocoEvaluator
from keypointdet.losses import ae_loss, focal_loss, gather_at, regression_loss
from keypointdet.models.heads import CenterHead, CornerHead

Outputs = dict[str, Tensor]
DEFAULT_OPTIMIZER = partial(torch.optim.Adam, lr=1.25e-4)
Detections = tuple[Tensor, Tensor, Tensor]  # boxes [B, K, 4] xyxy, scores [B, K], labels [B, K]


@dataclass(frozen=True)
class TestTimeAugmentation:
    """Test-time augmentation of :meth:`KeypointDetector.detect` (``model.tta.*``; off by default).

    Args:
        flip: also run the horizontally mirrored image. CenterNet averages the heatmap probabilities
            and sizes of the image and its mirror (offsets from the image), CornerNet decodes both and
            merges the detections with soft-NMS.
        scales: input scales; with more than one, every scale's detections are mapped back to the
            original image and merged with soft-NMS, keeping the detector's best 100 (``k`` / ``max_dets``).
    """

    __test__ = False  # not a pytest test class despite its name

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(scale) for scale in self.scales))
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"model.tta.scales must be a non-empty list of positive scales, got {list(self.scales)}")


def resize_images(images: Tensor, scale: float, size_divisor: int) -> tuple[Tensor, Tensor]:
    """Resize ``images [B, 3, H, W]`` by ``scale`` (bilinear) and zero-pad bottom / right to a multiple of
    ``size_divisor``. Returns the images and the exact ``(x, y)`` resize factors ``[2]`` after rounding."""
    height, width = images.shape[-2:]
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    factors = torch.tensor([new_width / width, new_height / height], device=images.device)
    if (new_height, new_width) != (height, width):
        images = F.interpolate(images, size=(new_height, new_width), mode="bilinear", align_corners=False)
    padded_height = -(-new_height // size_divisor) * size_divisor
    padded_width = -(-new_width // size_divisor) * size_divisor
    return F.pad(images, (0, padded_width - new_width, 0, padded_height - new_height)), factors


def concatenate(sets: Sequence[Detections]) -> Detections:
    """Candidate sets of the same images ``(boxes [B, K_i, 4], scores [B, K_i], labels [B, K_i])`` as one set."""
    boxes, scores, labels = (torch.cat(parts, dim=1) for parts in zip(*sets))
    return boxes, scores, labels


def build_backbone(config: Mapping[str, Any]) -> nn.Module:
    """A backbone instantiated from its Hydra config (a mapping with ``_target_``)."""
    if "_target_" not in config:
        raise ValueError(f"a backbone config needs a _target_, got keys {sorted(config)}")
    return instantiate(config, _convert_="object")


def mean_count_over_devices(count: Tensor) -> Tensor:
    """A loss normaliser that does not depend on how the batch is split over devices.

    DDP averages gradients over the ``world_size`` ranks, so dividing each rank's sum by
    ``total / world_size`` gives exactly the gradient of one process on the whole batch.
    """
    count = count.detach().float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = count.clone()
        dist.all_reduce(count)
        count /= dist.get_world_size()
    return count


class KeypointDetector(pl.LightningModule):
    """Shared training / evaluation loop of the keypoint detectors.

    Subclasses build ``self.heads`` (one per backbone stack) and implement :meth:`losses`,
    :meth:`decode` and the ``encoder`` used by the DataModule.

    Args:
        backbone: module returning a list of feature maps (one per stack) with the attributes
            ``out_channels``, ``num_stacks``, ``stride``, ``size_divisor``; or its Hydra config (saved
            in checkpoints, so that they can be loaded without the training config).
        num_classes: number of classes (from the annotation file).
        category_ids: dataset category id of each label, for COCO results.
        class_names: name of each label, for logs and drawings.
        optimizer: partial optimizer, completed with the parameters.
        scheduler: partial LR scheduler (or None), completed with the optimizer and, when it takes
            ``total_steps``, the trainer's estimated number of steps.
        scheduler_interval: ``"step"`` or ``"epoch"``.
        tta: keyword arguments of :class:`TestTimeAugmentation` (``flip``, ``scales``) used by :meth:`detect`.
    """

    def __init__(
        self,
        backbone: nn.Module | Mapping[str, Any],
        num_classes: int,
        category_ids: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        tta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(backbone, nn.Module):
            self.save_hyperparameters(logger=False, ignore=["backbone"])
        else:
            self.save_hyperparameters(logger=False)
            self.hparams.backbone = OmegaConf.to_container(OmegaConf.create(dict(backbone)), resolve=True)
            backbone = build_backbone(self.hparams.backbone)
        self.backbone = backbone
        self.tta = TestTimeAugmentation(**(tta or {}))
        self.num_classes = num_classes
        self.category_ids = list(category_ids) if category_ids is not None else list(range(1, num_classes + 1))
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in self.category_ids]
        self.stride: int = backbone.stride
        self.size_divisor: int = backbone.size_divisor
        self.evaluator: CocoEvaluator | None = None

    # --- to implement per detector -------------------------------------------------------------
    @property
    def encoder(self) -> Callable:
        raise NotImplementedError

    def losses(self, outputs: Outputs, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weighted loss terms of one stack's raw outputs; must contain ``"loss"`` (their sum)."""
        raise NotImplementedError

    def decode(self, outputs: Outputs) -> Detections:
        """``boxes [B, K, 4]`` xyxy in output pixels, ``scores [B, K]``, ``labels [B, K]``."""
        raise NotImplementedError

    def decode_flipped(self, outputs: Outputs, mirrored: Outputs) -> list[Detections]:
        """Flip test-time augmentation: candidate sets (output pixels of ``outputs``) from the raw outputs of
        a batch and of its horizontal mirror, merged by :meth:`merge`."""
        raise NotImplementedError

    @property
    def merge_config(self) -> dict[str, Any]:
        """Keyword arguments of :func:`keypointdet.decode.soft_nms` that merge test-time augmented detections."""
        raise NotImplementedError

    def candidates(self, outputs: Outputs) -> Detections:
        """One test-time augmentation's detections before :meth:`merge` (by default :meth:`decode`'s)."""
        return self.decode(outputs)

    def merge(self, sets: Sequence[Detections]) -> Detections:
        """The detections of several candidate sets (same images, original pixels): soft-NMS over all of
        them when there is more than one."""
        if len(sets) == 1:
            return sets[0]
        return soft_nms(*concatenate(sets), **self.merge_config)

    # --- shared ----------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> list[Outputs]:
        """``images [B, 3, H, W]`` -> the raw head outputs of every stack (the last one is used at inference)."""
        return [head(features) for head, features in zip(self.heads, self.backbone(images))]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        outputs = self(batch["image"])
        stacks = [self.losses(stack_outputs, batch) for stack_outputs in outputs]
        # Intermediate supervision: every stack's loss counts, averaged as in the official code.
        terms = {name: torch.stack([stack[name] for stack in stacks]).mean() for name in stacks[0]}
        batch_size = batch["image"].shape[0]
        self.log_dict({f"train/{name}": value for name, value in terms.items()}, prog_bar=True, batch_size=batch_size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        self._log_data_counts(batch, "data")
        return terms["loss"]

    def _log_data_counts(self, batch: dict[str, Tensor], prefix: str) -> None:
        """Sum every ``num_*`` count the data pipeline attaches (skipped boxes and images, dropped objects)
        over the epoch and the devices, as ``<prefix>/num_*``."""
        for name in sorted(key for key in batch if key.startswith("num_")):
            count = batch[name].sum().float()
            self.log(f"{prefix}/{name}", count, reduce_fx="sum", on_step=False, on_epoch=True, sync_dist=True)

    def _warn_data_counts(self, prefix: str, what: str) -> None:
        for name, count in self.trainer.callback_metrics.items():
            if name.startswith(f"{prefix}/num_") and count > 0:
                rank_zero_warn(f"epoch {self.current_epoch}: {name}={int(count)} were left out of {what}")

    def on_train_epoch_end(self) -> None:
        self._warn_data_counts("data", "training")

    def on_validation_epoch_start(self) -> None:
        datamodule = self.trainer.datamodule
        self.evaluator = CocoEvaluator(datamodule.val_dataset.coco)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        for image_id, detections in zip(batch["image_id"].tolist(), self.detect(batch)):
            self.evaluator.add(image_id, detections)
        self._log_data_counts(batch, "val_data")

    def on_validation_epoch_end(self) -> None:
        # The evaluator keeps its gathered detections (``evaluator.results``) until the next validation.
        metrics = self.evaluator.compute()
        # Identical on every rank (gathered and de-duplicated), so no reduction is needed.
        self.log_dict({f"val/{name}": value for name, value in metrics.items()}, sync_dist=False)
        self._warn_data_counts("val_data", "evaluation")

    @torch.no_grad()
    def detect(self, batch: dict[str, Tensor]) -> list[list[dict[str, Any]]]:
        """COCO results (original pixels, dataset category ids) of a collated batch, one list per image.

        With test-time augmentation (``self.tta``) the detections of every scale (and, for CornerNet,
        of the mirror) are merged with soft-NMS.
        """
        sets = [detections for scale in self.tta.scales for detections in self._detect_at_scale(batch, scale)]
        return self._per_image_results(batch, *self.merge(sets))

    def _detect_at_scale(self, batch: dict[str, Tensor], scale: float) -> list[Detections]:
        """Candidates (original pixels) of the batch's images resized by ``scale``, with flip if configured."""
        # Padded to a multiple of the stride too, so that the output map mirrors exactly onto the input.
        images, factors = resize_images(batch["image"], scale, math.lcm(self.size_divisor, self.stride))
        if not self.tta.flip:
            sets = [self.candidates(self(images)[-1])]
        else:
            outputs = self(torch.cat([images, images.flip(-1)]))[-1]
            halves = [{name: value.chunk(2)[half] for name, value in outputs.items()} for half in (0, 1)]
            sets = self.decode_flipped(*halves)
        return [(self.to_original(boxes, batch, factors), scores, labels) for boxes, scores, labels in sets]

    def postprocess(self, outputs: Outputs, batch: dict[str, Tensor]) -> list[list[dict[str, Any]]]:
        """Decode one stack's raw outputs and map the boxes to each image's original pixels."""
        boxes, scores, labels = self.decode(outputs)
        return self._per_image_results(batch, self.to_original(boxes, batch), scores, labels)

    def to_original(self, boxes: Tensor, batch: dict[str, Tensor], resize: Tensor | None = None) -> Tensor:
        """Boxes ``[B, K, 4]`` in output pixels -> original image pixels, clipped to the image.

        ``resize [2]``: the ``(x, y)`` factors by which the batch's images were resized before the network
        (test-time scales).
        """
        scale, shift = batch["scale"].repeat(1, 2)[:, None], batch["shift"].repeat(1, 2)[:, None]
        input_boxes = boxes * self.stride if resize is None else boxes * self.stride / resize.repeat(2)
        original = (input_boxes - shift) / scale
        height, width = batch["original_size"][:, 0], batch["original_size"][:, 1]
        upper = torch.stack([width, height, width, height], dim=-1)[:, None].to(original)
        return torch.minimum(original.clamp(min=0), upper)

    def _per_image_results(
        self, batch: dict[str, Tensor], boxes: Tensor, scores: Tensor, labels: Tensor
    ) -> list[list[dict[str, Any]]]:
        return [self._coco_results(*per_image) for per_image in zip(batch["image_id"].tolist(), boxes, scores, labels)]

    def _coco_results(self, image_id: int, boxes: Tensor, scores: Tensor, labels: Tensor) -> list[dict[str, Any]]:
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        return [
            {"image_id": image_id, "category_id": self.category_ids[label], "bbox": box, "score": score}
            for box, score, label in zip(xywh, scores.tolist(), labels.tolist())
            if score > 0  # padding and rejected candidates (CornerNet) score 0
        ]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the detector's class, so that :func:`keypointdet.inference.load_detector` can rebuild it."""
        checkpoint["detector_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.hparams.optimizer(params=self.parameters())
        if self.hparams.scheduler is None:
            return {"optimizer": optimizer}
        kwargs = {}
        if "total_steps" in inspect.signature(self.hparams.scheduler).parameters:
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.hparams.scheduler(optimizer=optimizer, **kwargs)
        schedule = {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


class CenterNet(KeypointDetector):
    """Objects as Points: a class heatmap of box centres, with size and sub-cell offset regressed there.

    Args:
        head_channels: hidden channels of each output branch.
        loss: ``alpha``, ``beta`` (focal loss), ``size_weight`` (0.1), ``offset_weight`` (1).
        targets: ``max_objects``, ``min_overlap``, ``radius_variant`` of :class:`CenterNetEncoder`.
        k: detections kept per image at decoding.
    """

    def __init__(
        self,
        backbone: nn.Module | Mapping[str, Any],
        num_classes: int,
        head_channels: int = 64,
        loss: dict[str, float] | None = None,
        targets: dict[str, Any] | None = None,
        k: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, num_classes, **kwargs)  # also saves this class's arguments
        self.loss_config = {"alpha": 2.0, "beta": 4.0, "size_weight": 0.1, "offset_weight": 1.0, **(loss or {})}
        self.heads = nn.ModuleList(
            CenterHead(self.backbone.out_channels, num_classes, head_channels) for _ in range(self.backbone.num_stacks)
        )
        self._encoder = CenterNetEncoder(num_classes, **(targets or {}))
        self.k = k

    @property
    def encoder(self) -> CenterNetEncoder:
        return self._encoder

    def losses(self, outputs: Outputs, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        config = self.loss_config
        num_objects = mean_count_over_devices(batch["mask"].sum())
        num_positives = mean_count_over_devices(batch["heatmap"].eq(1).sum())
        heatmap = focal_loss(outputs["heatmap"], batch["heatmap"], config["alpha"], config["beta"], num_positives)
        size = regression_loss(outputs["size"], batch["index"], batch["mask"], batch["size"], "l1", num_objects)
        offset = regression_loss(outputs["offset"], batch["index"], batch["mask"], batch["offset"], "l1", num_objects)
        loss = heatmap + config["size_weight"] * size + config["offset_weight"] * offset
        return {"loss": loss, "heatmap": heatmap, "size": size, "offset": offset}

    def decode(self, outputs: Outputs) -> Detections:
        return centernet_decode(outputs["heatmap"], outputs["size"], outputs["offset"], k=self.k)

    def decode_flipped(self, outputs: Outputs, mirrored: Outputs) -> list[Detections]:
        """As the official code: mean heatmap probabilities and sizes of image and mirror, the image's offsets."""
        scores = (torch.sigmoid(outputs["heatmap"].float()) + torch.sigmoid(mirrored["heatmap"].float()).flip(-1)) / 2
        size = (outputs["size"].float() + mirrored["size"].float().flip(-1)) / 2
        return [centernet_decode_scores(scores, size, outputs["offset"], k=self.k)]

    @property
    def merge_config(self) -> dict[str, Any]:
        # The official multi-scale test: gaussian soft-NMS (sigma 0.5), best 100 per image.
        return {"sigma": 0.5, "method": "gaussian", "max_dets": self.k}


class CornerNet(KeypointDetector):
    """CornerNet: objects as paired top-left / bottom-right corners, grouped by 1-D embeddings.

    Args:
        head_channels: hidden channels of each output branch (None: the backbone's width, as official).
        pool_channels: channels of the corner-pooling branches (128 in the paper).
        loss: ``alpha``, ``beta`` (focal loss), ``pull_weight`` (0.1), ``push_weight`` (0.1),
            ``offset_weight`` (1).
        targets: ``max_objects``, ``min_overlap``, ``radius_variant`` of :class:`CornerNetEncoder`.
        k, ae_threshold, num_dets, soft_nms_sigma, soft_nms_method, max_dets: decoding, see
            :func:`keypointdet.decode.cornernet_decode`.
    """

    def __init__(
        self,
        backbone: nn.Module | Mapping[str, Any],
        num_classes: int,
        head_channels: int | None = None,
        pool_channels: int = 128,
        loss: dict[str, float] | None = None,
        targets: dict[str, Any] | None = None,
        k: int = 100,
        ae_threshold: float = 0.5,
        num_dets: int = 1000,
        soft_nms_sigma: float = 0.5,
        soft_nms_method: str = "gaussian",
        max_dets: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, num_classes, **kwargs)  # also saves this class's arguments
        defaults = {"alpha": 2.0, "beta": 4.0, "pull_weight": 0.1, "push_weight": 0.1, "offset_weight": 1.0}
        self.loss_config = {**defaults, **(loss or {})}
        self.heads = nn.ModuleList(
            CornerHead(self.backbone.out_channels, num_classes, head_channels, pool_channels)
            for _ in range(self.backbone.num_stacks)
        )
        self._encoder = CornerNetEncoder(num_classes, **(targets or {}))
        self.decode_config = {
            "k": k,
            "ae_threshold": ae_threshold,
            "num_dets": num_dets,
            "soft_nms_sigma": soft_nms_sigma,
            "soft_nms_method": soft_nms_method,
            "max_dets": max_dets,
        }

    @property
    def encoder(self) -> CornerNetEncoder:
        return self._encoder

    def losses(self, outputs: Outputs, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        config = self.loss_config
        mask = batch["mask"]
        num_objects = mean_count_over_devices(mask.sum())
        heatmap = offset = 0.0
        embeddings = []
        for corner in ("tl", "br"):
            target, index = batch[f"{corner}_heatmap"], batch[f"{corner}_index"]
            num_positives = mean_count_over_devices(target.eq(1).sum())
            heatmap = heatmap + focal_loss(
                outputs[f"{corner}_heatmap"], target, config["alpha"], config["beta"], num_positives
            )
            offset = offset + regression_loss(
                outputs[f"{corner}_offset"], index, mask, batch[f"{corner}_offset"], "smooth_l1", num_objects
            )
            embeddings.append(gather_at(outputs[f"{corner}_embedding"], index)[..., 0])
        pull, push = ae_loss(*embeddings, mask, mean_count_over_devices(mask.any(dim=1).sum()))
        loss = heatmap + config["pull_weight"] * pull + config["push_weight"] * push + config["offset_weight"] * offset
        return {"loss": loss, "heatmap": heatmap, "pull": pull, "push": push, "offset": offset}

    def decode_flipped(self, outputs: Outputs, mirrored: Outputs) -> list[Detections]:
        """As the official code: the pairs of both, the mirror's mirrored back, then one soft-NMS (:meth:`merge`)."""
        boxes, scores, labels = self.candidates(mirrored)
        return [self.candidates(outputs), (mirror_boxes(boxes, outputs["tl_heatmap"].shape[-1]), scores, labels)]

    @property
    def merge_config(self) -> dict[str, Any]:
        config = self.decode_config
        return {"sigma": config["soft_nms_sigma"], "method": config["soft_nms_method"], "max_dets": config["max_dets"]}

    def candidates(self, outputs: Outputs) -> Detections:
        """The best ``num_dets`` corner pairs, before soft-NMS: every test-time augmentation's pairs are
        suppressed together, once, as in the official multi-scale / flip test."""
        names = ("tl_heatmap", "br_heatmap", "tl_embedding", "br_embedding", "tl_offset", "br_offset")
        config = {key: self.decode_config[key] for key in ("k", "ae_threshold", "num_dets")}
        return cornernet_pairs(*(outputs[name] for name in names), **config)

    def merge(self, sets: Sequence[Detections]) -> Detections:
        return soft_nms(*concatenate(sets), **self.merge_config)

    def decode(self, outputs: Outputs) -> Detections:
        return cornernet_decode(
            outputs["tl_heatmap"],
            outputs["br_heatmap"],
            outputs["tl_embedding"],
            outputs["br_embedding"],
            outputs["tl_offset"],
            outputs["br_offset"],
            **self.decode_config,
        )
