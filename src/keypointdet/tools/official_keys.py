"""Official CenterNet / CornerNet parameter names -> this repository's, by role (one table per architecture).

A table maps an official *prefix* (whole dotted components, possibly a whole key) to this repository's
prefix, to :data:`DROP` (tensors the converted model does not need) or to a :class:`Fold` (a DCN bias,
folded into the running mean of the BatchNorm that follows it). A key is renamed by its longest listed
prefix; the rest of the key (inner names such as ``0.conv1.weight`` or ``bn.running_mean``) is kept.
Plain renames are one-to-one, so the same table names the official source of a converted key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DROP = "<dropped>"


@dataclass(frozen=True)
class Fold:
    """An official DCN bias ``b``: the following BN of the converted model gets ``running_mean - b``."""

    running_mean: str


Table = dict[str, "str | Fold"]

# CenterNet head names -> CenterHead branches; CornerNet head names -> CornerHead branch dicts
CENTER_HEADS = {"hm": "heatmap", "wh": "size", "reg": "offset"}
# multi_pose heads -> CenterPoseHead branches (hps: joints from the centre, hm_hp: joint heatmaps)
POSE_HEADS = {**CENTER_HEADS, "hps": "joint_vector", "hm_hp": "joint_heatmap", "hp_offset": "joint_offset"}
CORNER_HEADS = {"heats": "heatmaps", "tags": "embeddings", "regrs": "offsets"}


def _deform_conv_bn(table: Table, dcn: str, bn: str, ours: str) -> None:
    """Official DCN ``dcn`` + BN ``bn`` -> this repository's ``Sequential(ModulatedDeformConv, BN, ReLU)`` ``ours``."""
    table[f"{dcn}.weight"] = f"{ours}.0.conv.weight"
    table[f"{dcn}.bias"] = Fold(f"{ours}.1.running_mean")
    table[f"{dcn}.conv_offset_mask"] = f"{ours}.0.offset_mask"
    table[bn] = f"{ours}.1"


def _single_stack_heads(table: Table, heads: Mapping[str, str] = CENTER_HEADS) -> None:
    for official, ours in heads.items():
        table[f"{official}.0"] = f"heads.0.{ours}.0"
        table[f"{official}.2"] = f"heads.0.{ours}.2"


def resnet_dcn_table(backbone: Mapping[str, Any]) -> Table:
    """``PoseResNet`` (``--arch resdcn_18``) -> ``ResNet(deformable=True)`` + :class:`CenterHead`."""
    table: Table = {"conv1": "backbone.stem.0", "bn1": "backbone.stem.1"}
    for layer in range(1, 5):  # torchvision block names inside the stages
        table[f"layer{layer}"] = f"backbone.stages.{layer - 1}"
    for stage in range(len(backbone.get("neck_channels", (256, 128, 64)))):
        first, ours = 6 * stage, f"backbone.neck.stages.{stage}"
        _deform_conv_bn(table, f"deconv_layers.{first}", f"deconv_layers.{first + 1}", ours)
        table[f"deconv_layers.{first + 3}"] = f"{ours}.3"
        table[f"deconv_layers.{first + 4}"] = f"{ours}.4"
    _single_stack_heads(table)
    return table


def _ida_up(table: Table, official: str, ours: str, num_inputs: int) -> None:
    """Official ``IDAUp`` (``proj_j`` / ``up_j`` / ``node_j``, j from 1) -> :class:`IDAUp` (lists from 0)."""
    for j in range(1, num_inputs):
        for name, role in (("proj", "projections"), ("node", "merges")):
            part = f"{official}.{name}_{j}"
            _deform_conv_bn(table, f"{part}.conv", f"{part}.actf.0", f"{ours}.{role}.{j - 1}")
        table[f"{official}.up_{j}"] = f"{ours}.upsamplings.{j - 1}"


def dla_table(backbone: Mapping[str, Any], levels: int = 4, heads: Mapping[str, str] = CENTER_HEADS) -> Table:
    """``DLASeg('dla34', last_level=5)`` -> ``DLA`` (timm trunk) + :class:`CenterHead` (``heads``: official head
    name -> branch; :data:`POSE_HEADS` for ``multi_pose``'s :class:`CenterPoseHead`).

    ``levels``: trunk maps the aggregation reads (strides 4..32). Dropped: the ImageNet classifier
    ``base.fc`` and the projections of the two-level trees (computed, then ignored by the official sub-tree).
    """
    table: Table = {"base": "backbone.trunk", "base.fc": DROP, "base.level3.project": DROP, "base.level4.project": DROP}
    for step in range(levels - 1):  # dla_up.ida_i aggregates the i + 2 deepest maps
        _ida_up(table, f"dla_up.ida_{step}", f"backbone.up.steps.{step}", step + 2)
    _ida_up(table, "ida_up", "backbone.merge", levels - 1)
    _single_stack_heads(table, heads)
    return table


def _conv_bn(table: Table, official: str, ours: str) -> None:
    """A CornerNet ``convolution`` (``conv`` + ``bn``) -> this repository's ``conv_bn(_relu)`` Sequential."""
    table[f"{official}.conv"] = f"{ours}.0"
    table[f"{official}.bn"] = f"{ours}.1"


def _two_layer_head(table: Table, official: str, ours: str) -> None:
    """``make_kp_layer``: ``convolution(3, with_bn=False)`` + 1x1 conv -> :func:`prediction_branch`."""
    table[f"{official}.0.conv"] = f"{ours}.0"
    table[f"{official}.1"] = f"{ours}.2"


def hourglass_table(backbone: Mapping[str, Any], detector: str) -> Table:
    """``exkp`` (CenterNet) or ``kp`` (CornerNet) -> ``Hourglass`` + :class:`CenterHead` / :class:`CornerHead`."""
    stacks = int(backbone.get("num_stacks", 2))
    table: Table = {"pre.1": "backbone.stem.1", "kps": "backbone.hourglasses"}
    _conv_bn(table, "pre.0", "backbone.stem.0")
    for s in range(stacks):
        _conv_bn(table, f"cnvs.{s}", f"backbone.cnvs.{s}")
        if detector == "centernet":
            for official, ours in CENTER_HEADS.items():
                _two_layer_head(table, f"{official}.{s}", f"heads.{s}.{ours}")
            continue
        for corner in ("tl", "br"):
            pool, ours = f"{corner}_cnvs.{s}", f"heads.{s}.pools.{corner}"
            _conv_bn(table, f"{pool}.p1_conv1", f"{ours}.branch1")
            _conv_bn(table, f"{pool}.p2_conv1", f"{ours}.branch2")
            _conv_bn(table, f"{pool}.conv2", f"{ours}.out")
            table.update({f"{pool}.p_conv1": f"{ours}.pooled.0", f"{pool}.p_bn1": f"{ours}.pooled.1"})
            table.update({f"{pool}.conv1": f"{ours}.shortcut.0", f"{pool}.bn1": f"{ours}.shortcut.1"})
            for official, branches in CORNER_HEADS.items():
                _two_layer_head(table, f"{corner}_{official}.{s}", f"heads.{s}.{branches}.{corner}")
    for s in range(stacks - 1):
        table[f"inters_.{s}"] = f"backbone.input_projs.{s}"
        table[f"cnvs_.{s}"] = f"backbone.feature_projs.{s}"
        table[f"inters.{s}"] = f"backbone.inters.{s}"
    return table


def lookup(table: Mapping[str, Any], key: str) -> tuple[Any, str] | None:
    """``(entry, rest)`` for the longest prefix of ``key`` (whole dotted components) listed in ``table``."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in table:
            return table[prefix], key[len(prefix) :]
    return None


def rename(table: Mapping[str, Any], key: str) -> str | Fold | None:
    """This repository's key for official ``key``: a name, :data:`DROP`, a :class:`Fold`, or None (unknown)."""
    found = lookup(table, key)
    if found is None:
        return None
    entry, rest = found
    if isinstance(entry, Fold) or entry == DROP:
        return entry if not rest or entry == DROP else None
    return entry + rest


def inverse(table: Mapping[str, Any]) -> dict[str, str]:
    """This repository's prefix -> the official one, for the plain renames (to name what a file lacks)."""
    return {ours: official for official, ours in table.items() if isinstance(ours, str) and ours != DROP}


def official_name(inverse_table: Mapping[str, str], key: str) -> str:
    """The official key that becomes ``key`` (``key`` itself when it has none, e.g. ``num_batches_tracked``)."""
    found = lookup(inverse_table, key)
    return key if found is None else found[0] + found[1]


def folds(table: Mapping[str, Any]) -> dict[str, str]:
    """Official DCN bias key -> the running mean it is folded into."""
    return {official: entry.running_mean for official, entry in table.items() if isinstance(entry, Fold)}


def table_for(family: str, detector: str, backbone: Mapping[str, Any]) -> Table:
    """The table of a network family (``resdcn``, ``dla``, ``hourglass``) with this backbone config."""
    if family == "resdcn":
        return resnet_dcn_table(backbone)
    if family == "dla":
        return dla_table(backbone, heads=POSE_HEADS if detector == "centernet_pose" else CENTER_HEADS)
    if family == "hourglass":
        return hourglass_table(backbone, detector)
    raise ValueError(f"unknown network family {family!r}")


__all__ = ["DROP", "Fold", "folds", "inverse", "lookup", "official_name", "rename", "table_for"]
