"""LightningDataModules for COCO-format and Pascal VOC detection data, shared by both detectors.

The detector decides what a training sample's targets are: the run builder hands its target encoder,
output stride and input size divisor to :meth:`BaseDetectionDataModule.configure_targets`.

Randomness is a function of ``seed`` and the epoch only: :class:`EpochSampler` draws each epoch's order
and one augmentation seed per sample from ``(seed, epoch)``, and the dataset restarts the augmentation
stream of every sample from its seed. So the samples do not depend on the number of workers, on which
worker loads them, or on the global random state, and a run resumed from a checkpoint sees exactly the
batches an uninterrupted run would, also from a checkpoint written within an epoch (the DataModule's state in the
checkpoint says how far into the epoch it was).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Sampler

from keypointdet.data.coco import CocoDetection, Encoder, Transform
from keypointdet.data.keypoints import KeypointSet
from keypointdet.data.loading import (  # collate, EpochSampler and the auto rules: public here too (README)
    AUTO,
    EpochSampler,
    auto_input_size,
    auto_num_workers,
    chosen_input_size,
    collate,
    loader_settings,
)
from keypointdet.data.synthetic import generate_dataset, generation_record, recorded_generation
from keypointdet.data.synthetic_pose import generate_pose_dataset
from keypointdet.data.transforms import (
    EVAL_RESIZES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Letterbox,
    NativeResolution,
    TrainTransform,
)
from keypointdet.data.voc import VOC_CLASSES, VOCDetection, parse_set
from keypointdet.log import get_logger

log = get_logger(__name__)

# data.generator: the embedded datasets' generators, (root, **data.generate)
GENERATORS = {"shapes": generate_dataset, "pose": generate_pose_dataset}

class BaseDetectionDataModule(pl.LightningDataModule):
    """Train / val dataloaders over a detection dataset; subclasses say where the data is.

    Args:
        input_size: side of the square training input; evaluation resizes the long side to it. ``"auto"``:
            :func:`auto_input_size` of the training images (of the validation images when only they are read),
            chosen by :meth:`setup`.
        eval_resize: the evaluation protocol: ``letterbox`` (long side to ``input_size``, padded bottom / right to
            the backbone's size divisor) or ``native`` (the official tests: each image at its own resolution,
            centred in a canvas of :func:`~keypointdet.data.transforms.native_canvas_side`).
        native_multiple, native_minus_one: that canvas, per side the smallest multiple of ``native_multiple``
            above the image side (minus one with ``native_minus_one``): official CenterNet ``--keep_res`` 32
            (ResNet, DLA) or 128 (hourglass); CornerNet 128 minus one (``side | 127``).
        batch_size, val_batch_size: training / evaluation batch (``val_batch_size`` defaults to ``batch_size``).
        num_workers, pin_memory: loader settings; ``"auto"``: :func:`auto_num_workers` of the CPUs this process
            may use (``os.sched_getaffinity``), and pinned memory only when a GPU is available.
        augment: keyword arguments of :class:`TrainTransform` (scales, border, flip, color_jitter, lighting).
        mean, std: normalisation (0-1 scale, RGB).
        seed: base seed of the training order and augmentation (None: drawn from torch's generator).
        strict: raise at the first bad annotation or image instead of skipping and counting it.
        keypoints: of a keypoint dataset, its :class:`~keypointdet.data.keypoints.KeypointSet` (``names``,
            ``flip_pairs``, ``sigmas``, ``skeleton``): objects are read with their COCO ``keypoints``, which the
            training augmentation carries (a flip swaps the pairs) and the keypoint evaluation scores.
    """

    def __init__(
        self,
        input_size: int | str = 512,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int | str = 4,
        pin_memory: bool | str = False,
        augment: dict[str, Any] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = None,
        strict: bool = False,
        eval_resize: str = "letterbox",
        native_multiple: int = 32,
        native_minus_one: bool = False,
        keypoints: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if eval_resize not in EVAL_RESIZES:
            raise ValueError(f"data.eval_resize must be one of {EVAL_RESIZES}, got {eval_resize!r}")
        # also records the arguments of the subclass being constructed
        self.save_hyperparameters(logger=False)
        self.seed = int(torch.randint(2**31, ())) if seed is None else int(seed)
        self.input_size: int | None = None if input_size == AUTO else int(input_size)
        self.num_workers, self.pin_memory = loader_settings(num_workers, pin_memory)
        self.keypoint_set = KeypointSet.from_config(keypoints) if keypoints else None
        self.encoder: Encoder | None = None
        self.stride = 4
        self.size_divisor = 32
        self.train_dataset: CocoDetection | None = None
        self.val_dataset: CocoDetection | None = None
        self.resume_position = (0, 0)  # (epoch, samples of it done): see state_dict

    # whether its evaluation also reports Pascal VOC2007's 11-point AP at IoU 0.5 (val/mAP50_voc07)
    voc07_metric = False

    def categories(self) -> list[dict[str, Any]]:
        """The dataset's categories (``id``, ``name``) sorted by id: label ``i`` is the ``i``-th."""
        raise NotImplementedError

    def make_dataset(self, split: str, transform: Transform | None, encoder: Encoder | None) -> CocoDetection:
        """The ``"train"`` or ``"val"`` dataset (``transform`` may be set later, before loading samples)."""
        raise NotImplementedError

    @property
    def num_joints(self) -> int | None:
        """Joints per object of a keypoint dataset (``None``: boxes only)."""
        return self.keypoint_set.num_joints if self.keypoint_set else None

    @property
    def keypoint_sigmas(self) -> list[float] | None:
        """The OKS sigmas of a keypoint dataset (``None``: boxes only)."""
        return list(self.keypoint_set.sigmas) if self.keypoint_set else None

    def configure_targets(self, encoder: Encoder | None, stride: int, size_divisor: int) -> None:
        """How training samples are encoded (``encoder(boxes_in_output_pixels, labels, output_size)``), at the
        detector's output ``stride``, with inputs padded to a multiple of its ``size_divisor``."""
        self.encoder, self.stride, self.size_divisor = encoder, stride, size_divisor

    def input_record(self) -> dict[str, Any]:
        """How images are prepared for the network (stored in checkpoints): letterbox side and normalisation."""
        if self.input_size is None:
            raise RuntimeError("data.input_size=auto is chosen from the images by setup(): call it first")
        return {"input_size": self.input_size, "mean": list(self.hparams.mean), "std": list(self.hparams.std)}

    def choose_input_size(self, dataset: CocoDetection) -> int:
        """The configured input size, or with ``input_size="auto"`` the one :func:`auto_input_size` picks from
        ``dataset``'s image sizes (logged)."""
        if self.hparams.input_size != AUTO:
            return int(self.hparams.input_size)
        return chosen_input_size(dataset, self.size_divisor)

    def ground_truth(self) -> COCO:
        """The validation annotations (checked, as evaluated) once :meth:`setup` has run."""
        if self.val_dataset is None:
            raise RuntimeError("the validation set is read by setup(): call it first")
        return self.val_dataset.coco

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            # every rank must draw the same order (the distributed sampler shards it), also when seed=null
            self.seed = self.trainer.strategy.broadcast(self.seed, src=0)
        if self.input_size is not None and self.input_size % self.size_divisor:
            raise ValueError(
                f"data.input_size={self.input_size} must be a multiple of the backbone's {self.size_divisor}"
            )
        mean, std = self.hparams.mean, self.hparams.std
        if stage in (None, "fit"):
            # the training set is read once: its image sizes choose the input size, then its transform is set
            self.train_dataset = self.make_dataset("train", None, self.encoder)
            self.input_size = self.choose_input_size(self.train_dataset)
        self.val_dataset = self.make_dataset("val", None, None)
        if self.input_size is None:  # auto, validation only: the rule on the validation images
            self.input_size = self.choose_input_size(self.val_dataset)
        if self.train_dataset is not None:
            augment = self.hparams.augment or {}
            flips = self.keypoint_set.flip_permutation() if self.keypoint_set else None
            self.train_dataset.transform = TrainTransform(
                self.input_size, mean=mean, std=std, flip_permutation=flips, **augment
            )
        self.val_dataset.transform = self.eval_transform()
        if self.train_dataset is not None and self.train_dataset.category_ids != self.val_dataset.category_ids:
            raise ValueError(f"{self.train_dataset.source} and {self.val_dataset.source} list different category ids")

    def eval_transform(self) -> Letterbox | NativeResolution:
        """The evaluation transform that ``data.eval_resize`` selects (validation during training and eval.py)."""
        mean, std = self.hparams.mean, self.hparams.std
        if self.hparams.eval_resize == "letterbox":
            return Letterbox(self.input_size, self.size_divisor, mean, std)
        if self.hparams.native_multiple % self.size_divisor:
            raise ValueError(
                f"data.native_multiple={self.hparams.native_multiple} must be a multiple of the backbone's "
                f"{self.size_divisor}"
            )
        return NativeResolution(self.hparams.native_multiple, self.hparams.native_minus_one, mean=mean, std=std)

    def train_dataloader(self) -> DataLoader:
        if self.encoder is None:
            raise RuntimeError("no target encoder: train with a detector or call configure_targets() first")
        sampler = EpochSampler(len(self.train_dataset), self.seed)
        # Lightning creates the first epoch's iterator (and worker processes prefetch from the sampler) before
        # its own set_epoch call, so a resumed run must start the sampler where its checkpoint was written.
        sampler.resume(*self.resume_position)
        return self._loader(self.train_dataset, self.hparams.batch_size, sampler=sampler, drop_last=True)

    def state_dict(self) -> dict[str, int]:
        """Where training is (saved in checkpoints): the ``epoch`` it runs or is about to run, and the training
        samples of it, over all ranks, already trained on (``samples_done``, 0 at an epoch boundary)."""
        loop = self.trainer.fit_loop
        epoch = loop.epoch_progress.current.processed
        if loop.epoch_progress.current.started <= epoch:  # at an epoch boundary
            return {"epoch": epoch, "samples_done": 0}
        batches_done = loop.epoch_loop.batch_progress.current.ready
        return {"epoch": epoch, "samples_done": batches_done * self.hparams.batch_size * self.trainer.world_size}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """A resumed run's sampler continues where the checkpoint was written (:meth:`EpochSampler.resume`)."""
        self.resume_position = (state_dict["epoch"], state_dict["samples_done"])

    def val_dataloader(self) -> DataLoader:
        batch_size = self.hparams.val_batch_size or self.hparams.batch_size
        return self._loader(self.val_dataset, batch_size, sampler=None, drop_last=False)

    def _loader(self, dataset: CocoDetection, batch_size: int, sampler: Sampler | None, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )


class DetectionDataModule(BaseDetectionDataModule):
    """COCO-format files (COCO 2017, the embedded dataset, any export).

    Args:
        root: dataset folder. With the COCO 2017 layout (``annotations/{annotation_prefix}_{split}2017.json``,
            ``{split}2017/``) it is all that is needed; explicit ``*_ann`` / ``*_img_dir`` override it.
        annotation_prefix: ``instances`` (boxes) or ``person_keypoints`` (COCO keypoints) in that layout.
        generate: keyword arguments of the embedded dataset's generator; when given, the dataset is generated
            into ``root`` on first use (a dataset already there and generated otherwise is used as it is, with a
            warning).
        generator: which embedded dataset: ``shapes`` (:func:`keypointdet.data.synthetic.generate_dataset`) or
            ``pose`` (:func:`keypointdet.data.synthetic_pose.generate_pose_dataset`).
        **kwargs: see :class:`BaseDetectionDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        train_ann: str | None = None,
        train_img_dir: str | None = None,
        val_ann: str | None = None,
        val_img_dir: str | None = None,
        generate: dict[str, Any] | None = None,
        annotation_prefix: str = "instances",
        generator: str = "shapes",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if generator not in GENERATORS:
            raise ValueError(f"data.generator must be one of {sorted(GENERATORS)}, got {generator!r}")
        layout = Path(root) if root is not None else None
        self.train_ann = self._path(train_ann, layout, f"annotations/{annotation_prefix}_train2017.json", "train_ann")
        self.train_img_dir = self._path(train_img_dir, layout, "train2017", "train_img_dir")
        self.val_ann = self._path(val_ann, layout, f"annotations/{annotation_prefix}_val2017.json", "val_ann")
        self.val_img_dir = self._path(val_img_dir, layout, "val2017", "val_img_dir")

    @staticmethod
    def _path(explicit: str | None, root: Path | None, default: str, name: str) -> Path:
        if explicit is not None:
            return Path(explicit)
        if root is None:
            raise ValueError(f"data.{name} is not set: give data.root (COCO 2017 layout) or data.{name}")
        return root / default

    def prepare_data(self) -> None:
        """Generate the embedded dataset when it is configured and not there yet. A dataset already there is
        never overwritten: when its files' ``info.generated_by`` differs from what ``data.generate`` asks for
        (other settings, another version of the generator, or no record: an earlier release's or not generated),
        a warning says so and how to generate it again."""
        if self.hparams.generate is None:
            return
        generator, settings = GENERATORS[self.hparams.generator], dict(self.hparams.generate)
        if not (self.train_ann.is_file() and self.val_ann.is_file()):
            generator(self.train_ann.parent, **settings)
            return
        wanted = generation_record(generator, settings)
        recorded = recorded_generation(self.train_ann)
        if recorded != wanted:
            log.warning(
                f"{self.train_ann} was not generated with data.generate (recorded generation: {recorded}; "
                f"data.generate asks for {wanted}): training on it as it is. To generate the dataset asked for, "
                f"delete {self.train_ann.parent} or set data.root to another folder"
            )

    def categories(self) -> list[dict[str, Any]]:
        """The categories of ``train_ann`` (call :meth:`prepare_data` first for the embedded dataset)."""
        try:
            categories = json.loads(self.train_ann.read_text())["categories"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"cannot read 'categories' from {self.train_ann}: {error}") from error
        return sorted(categories, key=lambda cat: cat["id"])

    def make_dataset(self, split: str, transform: Transform | None, encoder: Encoder | None) -> CocoDetection:
        ann_file, img_dir = (
            (self.train_ann, self.train_img_dir) if split == "train" else (self.val_ann, self.val_img_dir)
        )
        return CocoDetection(ann_file, img_dir, transform, encoder, self.stride, self.hparams.strict, self.num_joints)


class VOCDataModule(BaseDetectionDataModule):
    """Pascal VOC in the ``VOCdevkit`` layout, evaluated with COCO's mAP, AP50 and VOC2007's 11-point AP50.

    Args:
        root: the ``VOCdevkit`` folder (holding ``VOC2007``, ``VOC2012``).
        train_sets, val_sets: ``"<year>/<set>"`` image sets, e.g. ``["2007/trainval", "2012/trainval"]``
            and ``["2007/test"]`` (the usual protocol).
        **kwargs: see :class:`BaseDetectionDataModule`.
    """

    voc07_metric = True

    def __init__(
        self,
        root: str,
        train_sets: Sequence[str] = ("2007/trainval", "2012/trainval"),
        val_sets: Sequence[str] = ("2007/test",),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name in (*train_sets, *val_sets):
            parse_set(name)

    def categories(self) -> list[dict[str, Any]]:
        return [{"id": i + 1, "name": name} for i, name in enumerate(VOC_CLASSES)]

    def make_dataset(self, split: str, transform: Transform | None, encoder: Encoder | None) -> VOCDetection:
        sets = self.hparams.train_sets if split == "train" else self.hparams.val_sets
        return VOCDetection(self.hparams.root, list(sets), transform, encoder, self.stride, self.hparams.strict)
