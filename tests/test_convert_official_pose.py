"""Converter of the official ``multi_pose_dla_3x.pth`` layout (CenterNet DLA-34 pose heads), on a synthetic state
dict of the official key names and shapes: the ctdet DLA-34 body of the shared reference data and the heads of the
official ``multi_pose`` (``opts.py``: ``hm`` 1, ``wh`` 2, ``hps`` 34, ``reg`` 2, ``hm_hp`` 17, ``hp_offset`` 2, each
``Conv2d(64, head_conv=256, 3)``, ReLU, ``Conv2d(256, n, 1)``)."""

from __future__ import annotations

import functools
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from test_convert_official import random_fill, refused, save_official, shared

from keypointdet.inference import load_detector
from keypointdet.tools.convert_official import build_detector, convert_file, convert_state_dict, official_config

OFFICIAL_HEADS = {"hm": 1, "wh": 2, "hps": 34, "reg": 2, "hm_hp": 17, "hp_offset": 2}
OURS = {"hm": "heatmap", "wh": "size", "reg": "offset", "hps": "joint_vector", "hm_hp": "joint_heatmap",
        "hp_offset": "joint_offset"}  # fmt: skip


@functools.cache
def multi_pose_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Cached (filling DLA-34 takes seconds): callers must not modify the tensors."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = OrderedDict()
    for _, key, shape, dtype, rule, *_ in shared("centernet_dla34")["state_dict"]:
        if key.split(".")[0] not in ("hm", "wh", "reg"):  # ctdet's heads: replaced by multi_pose's
            state_dict[key] = random_fill(key, shape, rule, generator)
    for head, channels in OFFICIAL_HEADS.items():
        for layer, shape in (("0", [256, 64, 3, 3]), ("2", [channels, 256, 1, 1])):
            state_dict[f"{head}.{layer}.weight"] = random_fill(head, shape, "weight", generator)
            state_dict[f"{head}.{layer}.bias"] = random_fill(head, shape[:1], "bias", generator)
    return state_dict


def test_multi_pose_heads_convert_to_the_pose_branches() -> None:
    official = multi_pose_state_dict()
    config = official_config("centernet_pose_dla34")
    keypoints = config["detector"]["keypoints"]
    assert keypoints["names"][0] == "nose" and len(keypoints["sigmas"]) == 17
    detector = build_detector(config).eval()
    detector.load_state_dict(convert_state_dict("centernet_pose_dla34", official), strict=True)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = detector.backbone(image)[-1]
        outputs = detector.heads[0](features)
    for head, ours in OURS.items():
        hidden = F.relu(F.conv2d(features, official[f"{head}.0.weight"], official[f"{head}.0.bias"], padding=1))
        expected = F.conv2d(hidden, official[f"{head}.2.weight"], official[f"{head}.2.bias"])
        torch.testing.assert_close(outputs[ours], expected, rtol=1e-4, atol=1e-4)
    assert outputs["joint_vector"].shape[1] == 34 and outputs["joint_heatmap"].shape[1] == 17


def test_missing_pose_heads_are_refused_by_name() -> None:
    official = multi_pose_state_dict()
    without = {key: value for key, value in official.items() if key.split(".")[0] not in ("hps", "hp_offset")}
    message = refused(without, "centernet_pose_dla34")
    assert "hps.0.weight (-> heads.0.joint_vector.0.weight)" in message and "hp_offset.2.bias" in message


def test_a_multi_pose_file_converts_to_a_checkpoint_of_keypoint_detections(tmp_path: Path) -> None:
    """What ``python -m keypointdet.tools.convert_official arch=centernet_pose_dla34 input=... output=...`` runs."""
    path = save_official(multi_pose_state_dict(), tmp_path / "multi_pose_dla_3x.pth", "centernet_module")
    convert_file("centernet_pose_dla34", path, tmp_path / "multi_pose_dla_3x.ckpt")
    detector = load_detector(tmp_path / "multi_pose_dla_3x.ckpt")
    assert detector.class_names == ["person"] and detector.letterbox.input_size == 512
    with torch.no_grad():
        *_, keypoints = detector.decode(detector(torch.randn(1, 3, 64, 64))[-1])
    assert keypoints.shape == (1, 100, 17, 3)
