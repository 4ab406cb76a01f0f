"""LightningDataModule for COCO-format detection data, shared by both detectors.

The detector decides what a training sample's targets are: at ``setup`` the DataModule takes the
target encoder, output stride and input size divisor from the LightningModule it is trained with
(or from :meth:`DetectionDataModule.configure_targets` when used on its own).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, default_collate, get_worker_info

from keypointdet.data.coco import CocoDetection, Encoder
from keypointdet.data.synthetic import generate_dataset
from keypointdet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Letterbox, TrainTransform


def collate(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack samples; images of different sizes (evaluation letterbox) are zero-padded bottom / right."""
    height = max(sample["image"].shape[-2] for sample in samples)
    width = max(sample["image"].shape[-1] for sample in samples)
    for sample in samples:
        image = sample["image"]
        if image.shape[-2:] != (height, width):
            sample["image"] = F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]))
    return default_collate(samples)


def seed_worker(worker_id: int) -> None:
    """Give each data-loading worker its own augmentation stream (differs per worker and per epoch)."""
    info = get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


class DetectionDataModule(pl.LightningDataModule):
    """Train / val dataloaders over COCO-format files.

    Args:
        root: dataset folder. With the COCO 2017 layout (``annotations/instances_{split}2017.json``,
            ``{split}2017/``) it is all that is needed; explicit ``*_ann`` / ``*_img_dir`` override it.
        generate: keyword arguments of :func:`keypointdet.data.synthetic.generate_dataset`; when
            given, the embedded dataset is generated into ``root`` on first use.
        input_size: side of the square training input; evaluation resizes the long side to it.
        augment: keyword arguments of :class:`TrainTransform` (scale_range, shift, flip, color_jitter).
    """

    def __init__(
        self,
        root: str | None = None,
        train_ann: str | None = None,
        train_img_dir: str | None = None,
        val_ann: str | None = None,
        val_img_dir: str | None = None,
        generate: dict[str, Any] | None = None,
        input_size: int = 512,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = False,
        augment: dict[str, Any] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        layout = Path(root) if root is not None else None
        self.train_ann = self._path(train_ann, layout, "annotations/instances_train2017.json", "train_ann")
        self.train_img_dir = self._path(train_img_dir, layout, "train2017", "train_img_dir")
        self.val_ann = self._path(val_ann, layout, "annotations/instances_val2017.json", "val_ann")
        self.val_img_dir = self._path(val_img_dir, layout, "val2017", "val_img_dir")
        self.encoder: Encoder | None = None
        self.stride = 4
        self.size_divisor = 32
        self.train_dataset: CocoDetection | None = None
        self.val_dataset: CocoDetection | None = None

    @staticmethod
    def _path(explicit: str | None, root: Path | None, default: str, name: str) -> Path:
        if explicit is not None:
            return Path(explicit)
        if root is None:
            raise ValueError(f"data.{name} is not set: give data.root (COCO 2017 layout) or data.{name}")
        return root / default

    def prepare_data(self) -> None:
        """Generate the embedded dataset when it is configured and not there yet."""
        if self.hparams.generate is not None and not (self.train_ann.is_file() and self.val_ann.is_file()):
            generate_dataset(self.train_ann.parent, **self.hparams.generate)

    def categories(self) -> list[dict[str, Any]]:
        """The training file's ``categories``, sorted by id (label ``i`` is the ``i``-th)."""
        self.prepare_data()
        try:
            categories = json.loads(self.train_ann.read_text())["categories"]
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"cannot read 'categories' from {self.train_ann}: {error}") from error
        return sorted(categories, key=lambda cat: cat["id"])

    def configure_targets(self, encoder: Encoder, stride: int, size_divisor: int) -> None:
        """How training samples are encoded: ``encoder(boxes_in_output_pixels, labels, output_size)``."""
        self.encoder, self.stride, self.size_divisor = encoder, stride, size_divisor

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None and self.trainer.lightning_module is not None:
            module = self.trainer.lightning_module
            self.configure_targets(module.encoder, module.stride, module.size_divisor)
        if self.hparams.input_size % self.size_divisor:
            raise ValueError(
                f"data.input_size={self.hparams.input_size} must be a multiple of the backbone's {self.size_divisor}"
            )
        mean, std = self.hparams.mean, self.hparams.std
        letterbox = Letterbox(self.hparams.input_size, self.size_divisor, mean, std)
        if stage in (None, "fit"):
            augment = self.hparams.augment or {}
            train_transform = TrainTransform(self.hparams.input_size, mean=mean, std=std, **augment)
            self.train_dataset = CocoDetection(
                self.train_ann, self.train_img_dir, train_transform, self.encoder, self.stride
            )
        self.val_dataset = CocoDetection(self.val_ann, self.val_img_dir, letterbox)
        if self.train_dataset is not None and self.train_dataset.category_ids != self.val_dataset.category_ids:
            raise ValueError(f"{self.train_ann} and {self.val_ann} list different category ids")

    def train_dataloader(self) -> DataLoader:
        if self.encoder is None:
            raise RuntimeError("no target encoder: train with a detector or call configure_targets() first")
        # Seeds the in-process pipeline from torch's RNG (seed_everything); workers reseed in seed_worker.
        self.train_dataset.transform.set_random_seed(int(torch.randint(2**31, ())))
        return self._loader(self.train_dataset, self.hparams.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        batch_size = self.hparams.val_batch_size or self.hparams.batch_size
        return self._loader(self.val_dataset, batch_size, shuffle=False, drop_last=False)

    def _loader(self, dataset: CocoDetection, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last and len(dataset) >= batch_size,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
            worker_init_fn=seed_worker,
            collate_fn=collate,
        )
