"""What the loaders need besides the datasets: batching (``collate``), the (seed, epoch)-determined sampler,
and the settings chosen from the data and the machine (``"auto"`` input size and workers)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Sampler, default_collate

from keypointdet.data.coco import CocoDetection
from keypointdet.log import get_logger

log = get_logger(__name__)

# Lightning warns on every resume from within an epoch that a loader without state_dict() cannot resume there;
# these loaders can (EpochSampler.resume, from the DataModule's state in the checkpoint).
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")

AUTO = "auto"
# the automatic input size never exceeds the papers' COCO size
MAX_AUTO_INPUT_SIZE = 512
MAX_AUTO_WORKERS = 8


def auto_input_size(long_sides: Sequence[int], size_divisor: int, cap: int = MAX_AUTO_INPUT_SIZE) -> int:
    """The median of the images' ``long_sides`` (pixels) rounded to a multiple of ``size_divisor``, at least
    one divisor and at most ``cap`` (rounded down to a multiple)."""
    size = round(float(np.median(long_sides)) / size_divisor) * size_divisor
    return int(min(max(size, size_divisor), cap // size_divisor * size_divisor))


def image_long_sides(dataset: CocoDetection) -> list[int]:
    """The long side (pixels) of every image of ``dataset``, as its annotation file gives it."""
    return [max(info["height"], info["width"]) for info in dataset.coco.imgs.values()]


def auto_num_workers(cpus: int) -> int:
    """Loader workers of a process that may use ``cpus`` CPUs: one less (the process itself), at most 8."""
    return max(0, min(cpus - 1, MAX_AUTO_WORKERS))


def chosen_input_size(dataset: CocoDetection, size_divisor: int) -> int:
    """:func:`auto_input_size` of ``dataset``'s images, logged with what it was chosen from."""
    long_sides = image_long_sides(dataset)
    size = auto_input_size(long_sides, size_divisor)
    log.info(
        f"data.input_size=auto: {size} (median long side {np.median(long_sides):.0f} px of the "
        f"{len(long_sides)} images of {dataset.source}, a multiple of {size_divisor}, at most "
        f"{MAX_AUTO_INPUT_SIZE}); set data.input_size to override"
    )
    return size


def loader_settings(num_workers: int | str, pin_memory: bool | str) -> tuple[int, bool]:
    """``num_workers`` and ``pin_memory`` with ``"auto"`` resolved for this machine (logged when so)."""
    if AUTO not in (num_workers, pin_memory):
        return int(num_workers), bool(pin_memory)
    cpus = len(os.sched_getaffinity(0))
    workers = auto_num_workers(cpus) if num_workers == AUTO else int(num_workers)
    pin = torch.cuda.is_available() if pin_memory == AUTO else bool(pin_memory)
    log.info(
        f"data loaders: num_workers={workers}, pin_memory={pin} ({cpus} CPUs for this process, "
        f"{torch.cuda.device_count()} GPUs); set data.num_workers / data.pin_memory to override"
    )
    return workers, pin


def collate(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack samples; images of different sizes (evaluation letterbox) are zero-padded bottom / right."""
    height = max(sample["image"].shape[-2] for sample in samples)
    width = max(sample["image"].shape[-1] for sample in samples)
    for sample in samples:
        image = sample["image"]
        if image.shape[-2:] != (height, width):
            sample["image"] = F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]))
    return default_collate(samples)


class EpochSampler(Sampler[tuple[int, int]]):
    """Random order and per-sample augmentation seeds, both a function of ``(seed, epoch)`` only.

    Yields ``(index, sample_seed)`` pairs: a permutation of ``range(num_samples)`` and independent
    32-bit seeds, drawn from ``numpy.random.default_rng([seed, epoch])``. Lightning calls
    :meth:`set_epoch` before every epoch (also when resuming); without it every pass repeats epoch 0.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self.resumed_epoch, self.samples_done = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, samples_done: int) -> None:
        """Start at ``epoch``, of which the first ``samples_done`` pairs (over all ranks) were trained on before a
        checkpoint written within it. In that epoch they come last, so the pairs before them are the ones an
        uninterrupted run would continue with, on every rank (Lightning's distributed wrapper deals the sequence
        out rank by rank, and pads it with its first pairs: a rotation keeps both), and the trainer, which counts
        the epoch's batches from the checkpoint's, ends the epoch before reaching them."""
        self.set_epoch(epoch)
        self.resumed_epoch, self.samples_done = epoch, samples_done

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples)
        seeds = rng.integers(0, 2**32, size=self.num_samples)
        pairs = list(zip(order.tolist(), seeds.tolist()))
        done = self.samples_done if self.epoch == self.resumed_epoch else 0
        return iter(pairs[done:] + pairs[:done])
