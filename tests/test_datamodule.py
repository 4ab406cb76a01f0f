"""DataModule: padded max-objects targets of the right shapes, letterbox meta, and randomness that depends on\n(seed, epoch) only: not on the global random state, nor on the workers."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

from keypointdet.data.datamodule import DetectionDataModule, EpochSampler, collate
from keypointdet.data.encode import CenterNetEncoder


def make_datamodule(root, **kwargs) -> DetectionDataModule:
    datamodule = DetectionDataModule(
        root=str(root),
        train_ann=str(root / "train.json"),
        train_img_dir=str(root / "train"),
        val_ann=str(root / "val.json"),
        val_img_dir=str(root / "val"),
        input_size=128,
        batch_size=4,
        num_workers=0,
        **kwargs,
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


class SameImage(torch.utils.data.Dataset):
    """Every index loads image 0 of ``dataset`` with the sample seed it is given."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.dataset[(0, index[1])]


def epoch_batches(datamodule: DetectionDataModule, epoch: int, num_batches: int = 2) -> list[dict[str, torch.Tensor]]:
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(epoch)  # what Lightning does before every epoch, also when resuming
    return [batch for _, batch in zip(range(num_batches), loader)]


def assert_same_batches(first: list[dict[str, torch.Tensor]], second: list[dict[str, torch.Tensor]]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_same_seed_and_epoch_reproduce_whatever_the_global_random_state(tiny_dataset):
    torch.manual_seed(1)
    first = epoch_batches(make_datamodule(tiny_dataset, seed=5), epoch=3)
    torch.manual_seed(2)
    random.seed(2)
    np.random.seed(2)
    torch.rand(10)
    second = epoch_batches(make_datamodule(tiny_dataset, seed=5), epoch=3)
    assert_same_batches(first, second)


def test_epochs_and_seeds_change_order_and_augmentation(tiny_dataset):
    datamodule = make_datamodule(tiny_dataset, seed=5)
    epoch_0, epoch_1 = epoch_batches(datamodule, 0)[0], epoch_batches(datamodule, 1)[0]
    other_seed = epoch_batches(make_datamodule(tiny_dataset, seed=6), 0)[0]
    for other in (epoch_1, other_seed):
        assert not torch.equal(epoch_0["image_id"], other["image_id"])
    # the same image drawn in two epochs is augmented differently
    sampler = datamodule.train_dataloader().sampler
    sampler.set_epoch(0)
    seed_0 = dict(sampler)[0]
    sampler.set_epoch(1)
    seed_1 = dict(sampler)[0]
    dataset = datamodule.train_dataset
    assert not torch.equal(dataset[(0, seed_0)]["image"], dataset[(0, seed_1)]["image"])
    assert torch.equal(dataset[(0, seed_0)]["image"], dataset[(0, seed_0)]["image"])


def test_workers_draw_different_augmentations_and_do_not_change_them(tiny_dataset):
    datamodule = make_datamodule(tiny_dataset, seed=5)
    same_image = SameImage(datamodule.train_dataset)

    def images(num_workers: int) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            same_image, batch_size=1, num_workers=num_workers, sampler=EpochSampler(4, seed=5), collate_fn=collate
        )
        return [batch["image"] for batch in loader]

    two_workers = images(2)
    # worker 0 loads items 0 and 2, worker 1 items 1 and 3: four different augmentations of one image
    assert all(not torch.equal(two_workers[i], two_workers[j]) for i in range(4) for j in range(i))
    assert_same_batches([{"image": image} for image in two_workers], [{"image": image} for image in images(0)])


def test_epoch_sampler_is_a_seeded_permutation():
    sampler = EpochSampler(50, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        pairs = list(sampler)
        rng = np.random.default_rng([3, epoch])  # the documented recipe, drawn independently here
        assert [index for index, _ in pairs] == rng.permutation(50).tolist()
        assert [seed for _, seed in pairs] == rng.integers(0, 2**32, size=50).tolist()


class BatchRecorder(pl.LightningModule):
    """Records what every training step receives (image ids and an image checksum) for each epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, list[int], float]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, batch["image_id"].tolist(), float(batch["image"].sum())))
        return self.weight * batch["image"].mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_recording(
    tiny_dataset, tmp_path, max_epochs: int, ckpt_path=None, limit_train_batches: int = 2, **settings
) -> list[tuple[int, list[int], float]]:
    """What every step of a fit sees; ``settings``: ``max_steps`` of the Trainer, ``every_n_train_steps`` of
    the checkpoint (``last.ckpt``, also written at every epoch end)."""
    datamodule = DetectionDataModule(
        train_ann=str(tiny_dataset / "train.json"), train_img_dir=str(tiny_dataset / "train"),
        val_ann=str(tiny_dataset / "val.json"), val_img_dir=str(tiny_dataset / "val"),
        input_size=64, batch_size=4, num_workers=2, seed=5,
    )  # fmt: skip
    datamodule.configure_targets(CenterNetEncoder(num_classes=6, max_objects=32), 4, 32)
    model = BatchRecorder()
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, save_last=True, every_n_train_steps=settings.get("every_n_train_steps")
    )
    trainer = pl.Trainer(
        max_epochs=max_epochs, max_steps=settings.get("max_steps", -1), limit_train_batches=limit_train_batches,
        limit_val_batches=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, accelerator="cpu", callbacks=[checkpoint],
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return model.seen


def test_a_resumed_run_sees_the_batches_of_an_uninterrupted_one(tiny_dataset, tmp_path):
    straight = fit_recording(tiny_dataset, tmp_path / "straight", max_epochs=3)
    torch.manual_seed(123)  # whatever the global state of the resuming process
    fit_recording(tiny_dataset, tmp_path / "first", max_epochs=2)
    resumed = fit_recording(tiny_dataset, tmp_path / "resumed", 3, ckpt_path=tmp_path / "first" / "last.ckpt")
    assert [epoch for epoch, *_ in resumed] == [2, 2]
    assert resumed == straight[-2:]
    assert straight[0][1] != straight[2][1]  # and epochs differ


def test_a_run_resumed_from_within_an_epoch_sees_the_rest_of_it_then_the_next_epochs(tiny_dataset, tmp_path):
    straight = fit_recording(tiny_dataset, tmp_path / "straight", max_epochs=2, limit_train_batches=4)
    # stopped after step 3 of 4, with a checkpoint there
    fit_recording(tiny_dataset, tmp_path / "first", 2, limit_train_batches=4, max_steps=3, every_n_train_steps=3)
    resumed = fit_recording(
        tiny_dataset, tmp_path / "resumed", 2, ckpt_path=tmp_path / "first" / "last.ckpt", limit_train_batches=4
    )
    assert [epoch for epoch, *_ in resumed] == [0, 1, 1, 1, 1]
    assert resumed == straight[3:]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_a_resumed_sampler_deals_every_rank_the_rest_of_its_epoch(world_size):
    num_samples, batch_size, batches_done = 11, 2, 1  # 11 samples: Lightning's wrapper pads them for 2 or 3 ranks

    def rank_pairs(sampler: EpochSampler, rank: int) -> list[tuple[int, int]]:
        """What rank ``rank`` draws (Lightning's wrapper of a custom sampler under DDP)."""
        return list(DistributedSamplerWrapper(sampler, num_replicas=world_size, rank=rank, shuffle=False))

    uninterrupted, resumed = EpochSampler(num_samples, seed=3), EpochSampler(num_samples, seed=3)
    uninterrupted.set_epoch(4)
    resumed.resume(4, batches_done * batch_size * world_size)
    for rank in range(world_size):
        rest = rank_pairs(uninterrupted, rank)[batches_done * batch_size :]
        assert rank_pairs(resumed, rank)[: len(rest)] == rest
    for epoch in (5, 6):  # the epochs after it are whole
        uninterrupted.set_epoch(epoch)
        resumed.set_epoch(epoch)
        assert list(resumed) == list(uninterrupted)


@pytest.mark.parametrize(
    ("generator", "settings", "other"),
    [("shapes", {"image_size": [40, 48], "max_objects": 2}, {"max_objects": 3}),
     ("pose", {"image_size": 48, "figure_height": [30, 40]}, {"figure_height": [30, 44]})],
)  # fmt: skip
def test_a_generated_dataset_is_kept_and_a_differently_generated_one_is_reported(
    tmp_path, caplog, monkeypatch, generator, settings, other
):
    """Generated when missing; then never overwritten, but a warning naming the file when the settings asked for
    (defaults included), the generator's version or the record itself (an earlier release's dataset) differ."""
    train = tmp_path / "train.json"

    def prepare(settings):
        caplog.clear()
        data = DetectionDataModule(root=str(tmp_path), train_ann=str(train), val_ann=str(tmp_path / "val.json"),
                                   generate=settings, generator=generator)  # fmt: skip
        data.prepare_data()
        return train.stat().st_mtime_ns, "was not generated with data.generate" in caplog.text

    first = {"num_train": 2, "num_val": 1, "seed": 0, **settings}
    written, warned = prepare(first)
    assert json.loads(train.read_text())["images"] and not warned
    spelled_out = {**first, "min_visible_joints": 3} if generator == "pose" else {**first, "min_object": 6}
    assert prepare(spelled_out) == (written, False)
    assert prepare({**first, **other}) == (written, True) and str(train) in caplog.text
    generators = {"shapes": "keypointdet.data.synthetic", "pose": "keypointdet.data.synthetic_pose"}
    with monkeypatch.context() as patched:
        patched.setattr(f"{generators[generator]}.GENERATOR_VERSION", 99)
        assert prepare(first) == (written, True)
    document = json.loads(train.read_text())
    train.write_text(json.dumps({key: value for key, value in document.items() if key != "info"}))
    assert prepare(first)[1]
