"""DataModule: padded max-objects targets of the right shapes, per-worker augmentation, letterbox meta."""

from __future__ import annotations

import torch

from keypointdet.data.datamodule import DetectionDataModule
from keypointdet.data.encode import CenterNetEncoder


def make_datamodule(root, **kwargs) -> DetectionDataModule:
    datamodule = DetectionDataModule(
        root=str(root), train_ann=str(root / "train.json"), train_img_dir=str(root / "train"),
        val_ann=str(root / "val.json"), val_img_dir=str(root / "val"),
        input_size=128, batch_size=4, num_workers=0, **kwargs,
    )
    datamodule.configure_targets(CenterNetEncoder(num_classes=6, max_objects=32), stride=4, size_divisor=32)
    datamodule.setup("fit")
    return datamodule


def test_train_batch_contract(tiny_dataset):
    batch = next(iter(make_datamodule(tiny_dataset).train_dataloader()))
    assert batch["image"].shape == (4, 3, 128, 128) and batch["image"].dtype == torch.float32
    assert batch["heatmap"].shape == (4, 6, 32, 32)
    assert batch["heatmap"].min() >= 0 and batch["heatmap"].max() <= 1
    assert batch["index"].shape == (4, 32) and batch["index"].dtype == torch.int64
    assert batch["mask"].shape == (4, 32) and batch["mask"].dtype == torch.bool
    assert batch["size"].shape == batch["offset"].shape == (4, 32, 2)
    assert (batch["index"][batch["mask"]] < 32 * 32).all()
    assert (batch["index"][~batch["mask"]] == 0).all()
    offsets = batch["offset"][batch["mask"]]
    assert (offsets >= 0).all() and (offsets < 1).all()
    assert (batch["size"][batch["mask"]] > 0).all()


def test_val_batch_is_letterboxed_with_its_transform(tiny_dataset):
    datamodule = make_datamodule(tiny_dataset)
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["image"].shape[-2] % 32 == 0 and batch["image"].shape[-1] % 32 == 0
    height, width = batch["original_size"][:, 0].float(), batch["original_size"][:, 1].float()
    # the long side maps to input_size, at the image's aspect ratio
    long_side = torch.maximum(height * batch["scale"][:, 1], width * batch["scale"][:, 0])
    torch.testing.assert_close(long_side, torch.full_like(long_side, 128.0), atol=0.5, rtol=0)


def test_workers_draw_different_augmentations(tiny_dataset):
    datamodule = make_datamodule(tiny_dataset, augment={"flip": 0.5, "color_jitter": 0.4})
    datamodule.hparams.num_workers = 2
    dataset = datamodule.train_dataset
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, [0, 0, 0, 0]), batch_size=1, num_workers=2,
        worker_init_fn=lambda worker_id: _seed_subset_worker(worker_id),
    )
    images = [batch["image"] for batch in loader]
    # worker 0 gets items 0 and 2, worker 1 gets 1 and 3: the same image must come out differently
    assert not torch.equal(images[0], images[1])


def _seed_subset_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.dataset.transform.set_random_seed(info.seed % 2**32)
