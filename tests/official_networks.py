"""Minimal re-implementations of the official CenterNet / CornerNet networks, for testing the converter.

Written from the description in ``shared/official/README.md`` (no official code is copied): the official
parameter names, registration order and forward passes of CenterNet's ``PoseResNet`` (resdcn18, DCNv2 via
``torchvision.ops.deform_conv2d``), ``DLASeg`` (DLA-34) and ``exkp`` (hourglass), and CornerNet's ``kp``
(corner pools as running maxima). Their ``state_dict()`` keys and order must equal the shared JSON lists,
and with the shared fill they must reproduce the shared outputs; then they serve as the reference for
other weights and inputs. Inputs are BGR, forward returns the last stack's raw maps under the official names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d


class DCN(nn.Module):
    """DCNv2's ``DCN`` (3x3, stride 1, padding 1): ``weight``, ``bias``, then ``conv_offset_mask`` (27 channels)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.conv_offset_mask = nn.Conv2d(cin, 27, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        o1, o2, m = torch.chunk(self.conv_offset_mask(x), 3, dim=1)
        offset, mask = torch.cat((o1, o2), dim=1), torch.sigmoid(m)
        return deform_conv2d(x, offset, self.weight, self.bias, padding=(1, 1), mask=mask)


def head(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """CenterNet ResNet / DLA head: ``.0`` 3x3 conv with bias, ReLU, ``.2`` 1x1 conv with bias."""
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, cout, 1))


CENTER_HEADS = {"hm": 80, "wh": 2, "reg": 2}


# --- resdcn18 -------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision / ucbdrive basic block; ``residual`` overrides the shortcut (DLA trees pass it)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if downsample:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if residual is None:
            residual = self.downsample(x) if hasattr(self, "downsample") else x
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + residual)


class PoseResNetDCN(nn.Module):
    """``PoseResNet(BasicBlock, [2, 2, 2, 2], heads, head_conv=64)`` with DCN deconvolution layers."""

    def __init__(self, head_conv: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for index, cout in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if index == 1 else 2
            blocks = [BasicBlock(cin, cout, stride, stride != 1 or cin != cout), BasicBlock(cout, cout)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            cin = cout
        layers: list[nn.Module] = []
        for cout in (256, 128, 64):
            up = nn.ConvTranspose2d(cout, cout, 4, stride=2, padding=1, bias=False)
            layers += [DCN(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(), up, nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.deconv_layers = nn.Sequential(*layers)
        for name, cout in CENTER_HEADS.items():
            setattr(self, name, head(64, head_conv, cout))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
        x = self.deconv_layers(x)
        return {name: getattr(self, name)(x) for name in CENTER_HEADS}


# --- DLA-34 ---------------------------------------------------------------------------------------------
class Root(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, *x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(torch.cat(x, 1))))


class Tree(nn.Module):
    def __init__(self, levels: int, cin: int, cout: int, stride: int = 1, level_root: bool = False, root_dim: int = 0):
        super().__init__()
        root_dim = (root_dim or 2 * cout) + (cin if level_root else 0)
        if levels == 1:
            self.tree1, self.tree2 = BasicBlock(cin, cout, stride), BasicBlock(cout, cout)
            self.root = Root(root_dim, cout)
        else:
            self.tree1 = Tree(levels - 1, cin, cout, stride)
            self.tree2 = Tree(levels - 1, cout, cout, root_dim=root_dim + cout)
        self.levels, self.level_root, self.stride = levels, level_root, stride
        if cin != cout:
            self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor, residual: Tensor | None = None, children: list[Tensor] | None = None) -> Tensor:
        children = [] if children is None else children
        bottom = F.max_pool2d(x, self.stride, self.stride) if self.stride > 1 else x
        residual = self.project(bottom) if hasattr(self, "project") else bottom  # dead when levels > 1
        if self.level_root:
            children.append(bottom)
        if self.levels == 1:
            x1 = self.tree1(x, residual)
            return self.root(self.tree2(x1), x1, *children)
        x1 = self.tree1(x)
        return self.tree2(x1, children=[*children, x1])


class DLA34(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        ch = [16, 32, 64, 128, 256, 512]
        self.base_layer = nn.Sequential(nn.Conv2d(3, 16, 7, 1, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.level0 = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.level1 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.level2 = Tree(1, ch[1], ch[2], 2)
        self.level3 = Tree(2, ch[2], ch[3], 2, level_root=True)
        self.level4 = Tree(2, ch[3], ch[4], 2, level_root=True)
        self.level5 = Tree(1, ch[4], ch[5], 2, level_root=True)
        self.fc = nn.Conv2d(512, 1000, 1)  # pretrained=True's ImageNet classifier, unused

    def forward(self, x: Tensor) -> list[Tensor]:
        x, levels = self.base_layer(x), []
        for index in range(6):
            x = getattr(self, f"level{index}")(x)
            levels.append(x)
        return levels


class DeformConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.actf = nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU())
        self.conv = DCN(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.actf(self.conv(x))


class IDAUp(nn.Module):
    def __init__(self, out: int, channels: Sequence[int], factors: Sequence[int]) -> None:
        super().__init__()
        for j in range(1, len(channels)):
            f = int(factors[j])
            setattr(self, f"proj_{j}", DeformConv(channels[j], out))
            setattr(self, f"up_{j}", nn.ConvTranspose2d(out, out, 2 * f, f, f // 2, groups=out, bias=False))
            setattr(self, f"node_{j}", DeformConv(out, out))

    def forward(self, layers: list[Tensor], start: int, end: int) -> None:
        for i in range(start + 1, end):
            j = i - start
            up = getattr(self, f"up_{j}")(getattr(self, f"proj_{j}")(layers[i]))
            layers[i] = getattr(self, f"node_{j}")(up + layers[i - 1])


class DLAUp(nn.Module):
    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        in_channels, scales = list(channels), [2**i for i in range(len(channels))]
        for i in range(len(channels) - 1):
            j = -i - 2
            setattr(self, f"ida_{i}", IDAUp(channels[j], in_channels[j:], [s // scales[j] for s in scales[j:]]))
            scales[j + 1 :] = [scales[j]] * len(scales[j + 1 :])
            in_channels[j + 1 :] = [channels[j]] * len(in_channels[j + 1 :])

    def forward(self, layers: list[Tensor], first: int = 2) -> list[Tensor]:
        out = [layers[-1]]
        for i in range(len(layers) - first - 1):
            getattr(self, f"ida_{i}")(layers, len(layers) - i - 2, len(layers))
            out.insert(0, layers[-1])
        return out


class DLASeg(nn.Module):
    """``DLASeg('dla34', heads, down_ratio=4, final_kernel=1, last_level=5, head_conv=256)``."""

    def __init__(self, head_conv: int = 256) -> None:
        super().__init__()
        self.base = DLA34()
        self.dla_up = DLAUp([64, 128, 256, 512])
        self.ida_up = IDAUp(64, [64, 128, 256], [1, 2, 4])
        for name, cout in CENTER_HEADS.items():
            setattr(self, name, head(64, head_conv, cout))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.dla_up(self.base(x))
        y = [x[i].clone() for i in range(3)]
        self.ida_up(y, 0, len(y))
        return {name: getattr(self, name)(y[-1]) for name in CENTER_HEADS}


# --- hourglass (CenterNet exkp, CornerNet kp) -----------------------------------------------------------
class Convolution(nn.Module):
    """CornerNet's ``convolution(k, inp, out, stride, with_bn)``: ``conv`` (+ ``bn``) + ReLU."""

    def __init__(self, k: int, cin: int, cout: int, stride: int = 1, with_bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=not with_bn)
        if with_bn:
            self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return F.relu(self.bn(x) if hasattr(self, "bn") else x)


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (self.skip(x) if hasattr(self, "skip") else x))


class KpModule(nn.Module):
    def __init__(self, n: int, dims: Sequence[int], modules: Sequence[int]) -> None:
        super().__init__()
        cur, nxt, mod = dims[0], dims[1], modules[0]
        self.up1 = nn.Sequential(*[Residual(cur, cur) for _ in range(mod)])
        self.low1 = nn.Sequential(Residual(cur, nxt, 2), *[Residual(nxt, nxt) for _ in range(mod - 1)])
        if n > 1:
            self.low2: nn.Module = KpModule(n - 1, dims[1:], modules[1:])
        else:
            self.low2 = nn.Sequential(*[Residual(nxt, nxt) for _ in range(modules[1])])
        self.low3 = nn.Sequential(*[Residual(nxt, nxt) for _ in range(mod - 1)], Residual(nxt, cur))

    def forward(self, x: Tensor) -> Tensor:
        return self.up1(x) + F.interpolate(self.low3(self.low2(self.low1(x))), scale_factor=2, mode="nearest")


def running_max(x: Tensor, dim: int, from_end: bool) -> Tensor:
    """``out[i] = max_{j >= i} x[j]`` (``from_end``) or ``max_{j <= i}`` along ``dim``."""
    if from_end:
        return x.flip(dim).cummax(dim).values.flip(dim)
    return x.cummax(dim).values


class Pool(nn.Module):
    """CornerNet's corner pooling module; ``corner`` 'tl' (Top + Left) or 'br' (Bottom + Right)."""

    def __init__(self, dim: int, corner: str) -> None:
        super().__init__()
        self.corner = corner
        self.p1_conv1 = Convolution(3, dim, 128)
        self.p2_conv1 = Convolution(3, dim, 128)
        self.p_conv1 = nn.Conv2d(128, dim, 3, padding=1, bias=False)
        self.p_bn1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim)
        self.conv2 = Convolution(3, dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        from_end = self.corner == "tl"  # Top / Left: max over j >= i; Bottom / Right: j <= i
        pooled = running_max(self.p1_conv1(x), 2, from_end) + running_max(self.p2_conv1(x), 3, from_end)
        return self.conv2(F.relu(self.p_bn1(self.p_conv1(pooled)) + self.bn1(self.conv1(x))))


def conv1x1_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


def kp_head(cnv_dim: int, dim: int, cout: int) -> nn.Sequential:
    return nn.Sequential(Convolution(3, cnv_dim, dim, with_bn=False), nn.Conv2d(dim, cout, 1))


class HourglassNet(nn.Module):
    """``exkp`` (``cornernet=False``) or ``kp`` (``cornernet=True``), registered in the official order."""

    def __init__(self, n: int, nstack: int, dims: Sequence[int], modules: Sequence[int], stem: int, cnv_dim: int,
                 cornernet: bool = False) -> None:  # fmt: skip
        super().__init__()
        dim, self.nstack, self.cornernet = dims[0], nstack, cornernet
        ml = nn.ModuleList
        self.pre = nn.Sequential(Convolution(7, 3, stem, 2), Residual(stem, dim, 2))
        self.kps = ml(KpModule(n, dims, modules) for _ in range(nstack))
        self.cnvs = ml(Convolution(3, dim, cnv_dim) for _ in range(nstack))
        if cornernet:
            self.tl_cnvs = ml(Pool(cnv_dim, "tl") for _ in range(nstack))
            self.br_cnvs = ml(Pool(cnv_dim, "br") for _ in range(nstack))
            for name, cout in (("heats", 80), ("tags", 1)):
                for corner in ("tl", "br"):
                    setattr(self, f"{corner}_{name}", ml(kp_head(cnv_dim, dim, cout) for _ in range(nstack)))
        self.inters = ml(Residual(dim, dim) for _ in range(nstack - 1))
        self.inters_ = ml(conv1x1_bn(dim, dim) for _ in range(nstack - 1))
        self.cnvs_ = ml(conv1x1_bn(cnv_dim, dim) for _ in range(nstack - 1))
        heads = {f"{c}_regrs": 2 for c in ("tl", "br")} if cornernet else CENTER_HEADS
        for name, cout in heads.items():
            setattr(self, name, ml(kp_head(cnv_dim, dim, cout) for _ in range(nstack)))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        inter = self.pre(x)
        for s in range(self.nstack):
            cnv = self.cnvs[s](self.kps[s](inter))
            if s < self.nstack - 1:
                inter = self.inters[s](F.relu(self.inters_[s](inter) + self.cnvs_[s](cnv)))
        if not self.cornernet:
            return {name: getattr(self, name)[-1](cnv) for name in CENTER_HEADS}
        pooled = {"tl": self.tl_cnvs[-1](cnv), "br": self.br_cnvs[-1](cnv)}
        return {
            f"{corner}_{name}": getattr(self, f"{corner}_{name}")[-1](pooled[corner])
            for name in ("heats", "tags", "regrs")
            for corner in ("tl", "br")
        }


def build_official(name: str, hyper_parameters: dict) -> nn.Module:
    """The reference network of a shared JSON (``name``: its ``name`` field), in eval mode."""
    hp = hyper_parameters
    if name == "centernet_resdcn18":
        net: nn.Module = PoseResNetDCN(hp["head_conv"])
    elif name == "centernet_dla34":
        net = DLASeg(hp["head_conv"])
    else:
        net = HourglassNet(hp["n"], hp["nstack"], hp["dims"], hp["modules"], hp["stem_channels"], hp["cnv_dim"],
                           cornernet=name.startswith("cornernet"))  # fmt: skip
    return net.eval()
