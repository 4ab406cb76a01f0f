"""Converter of the official CenterNet / CornerNet checkpoints, against the shared reference data.

``shared/official/`` (next to the repository) holds the official key lists and the official networks'
outputs for deterministic weights; ``tests/official_networks.py`` re-implements those networks under the
official names, is checked against the same outputs, then checks the converter on other weights and inputs.
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from keypointdet.tools.convert_official import (
    COCO_CATEGORY_IDS,
    COCO_CLASS_NAMES,
    OFFICIAL_ARCHS,
    OfficialCheckpointError,
    build_detector,
    convert_state_dict,
    official_config,
    read_official,
)
from keypointdet.inference import load_detector
from official_networks import build_official

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "official"
pytestmark = pytest.mark.skipif(not OFFICIAL.is_dir(), reason=f"no official reference data at {OFFICIAL}")

# shared instance -> converter arch (the reduced hourglasses are Hourglass-104 archs with backbone overrides)
INSTANCES = {
    "centernet_resdcn18": "centernet_resdcn18",
    "centernet_dla34": "centernet_dla34",
    "centernet_hourglass_tiny": "centernet_hourglass104",
    "cornernet_hourglass_tiny": "cornernet_hourglass104",
}


@functools.cache
def shared(name: str) -> dict:
    return json.loads((OFFICIAL / f"{name}.json").read_text())


def overrides(data: dict) -> dict | None:
    """Backbone overrides of a reduced hourglass, from the JSON's hyper-parameters."""
    hp = data["hyper_parameters"]
    if "n" not in hp or hp["dims"][0] == 256:
        return None
    return {"depth": hp["n"], "num_stacks": hp["nstack"], "dims": hp["dims"], "modules": hp["modules"],
            "stem_channels": hp["stem_channels"], "out_channels": hp["cnv_dim"]}  # fmt: skip


def fill(index: int, shape: list[int], rule: str) -> Tensor:
    """The README's deterministic weights of entry ``index``: float64, one rounding to float32 at the end."""
    if rule == "zero":
        return torch.zeros(shape, dtype=torch.int64)
    n = math.prod(shape)
    j = torch.arange(n, dtype=torch.float64)
    base = torch.sin((1.3 * j + 0.1 * index) + (0.001 * j) * j)
    values = {
        "weight": lambda: base * 2 / math.sqrt(n / shape[0]),
        "bias": lambda: 0.1 * base,
        "bn_weight": lambda: 1 + 0.2 * base,
        "bn_bias": lambda: 0.1 * base,
        "bn_mean": lambda: 0.1 * base,
        "bn_var": lambda: 1 + 0.25 * (base + 1),
    }[rule]()
    return values.reshape(shape).to(torch.float32)


def random_fill(key: str, shape: list[int], rule: str, generator: torch.Generator) -> Tensor:
    """Other weights of the same roles (a seeded random draw), to show the conversion does not depend on them.

    The DCN offset convs get small weights: He-sized ones push every sampling point off the map, and then
    resdcn18's outputs no longer depend on the input at all.
    """
    if rule == "zero":
        return torch.zeros(shape, dtype=torch.int64)
    x = torch.randn(shape, generator=generator)
    if rule == "weight":
        scale = 0.1 if "conv_offset_mask" in key else 1.0
        return x * scale * math.sqrt(2 / (math.prod(shape) / shape[0]))
    if rule == "bn_weight":
        return 1 + 0.2 * x
    if rule == "bn_var":
        return 0.5 + torch.rand(shape, generator=generator)
    return 0.1 * x


def official_state_dict(data: dict, seed: int | None = None) -> OrderedDict[str, Tensor]:
    """The official state dict of a JSON key list: the shared fill (``seed=None``, sums checked) or a random one.

    Cached per instance (filling DLA-34 takes seconds): callers must not modify the tensors.
    """
    return _official_state_dict(data["name"], seed)


@functools.cache
def _official_state_dict(name: str, seed: int | None) -> OrderedDict[str, Tensor]:
    data = shared(name)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    state_dict = OrderedDict()
    for index, key, shape, dtype, rule, *checksum in data["state_dict"]:
        tensor = fill(index, shape, rule) if generator is None else random_fill(key, shape, rule, generator)
        assert str(tensor.dtype) == f"torch.{dtype}", key
        if generator is None and checksum and rule != "zero":
            # float64 sum of the float32 values; NumPy's pairwise order (torch's differs in the last bits)
            assert np.sum(tensor.numpy().astype(np.float64)) == pytest.approx(checksum[0], rel=1e-12, abs=1e-12), key
        state_dict[key] = tensor
    return state_dict


def save_official(state_dict: dict[str, Tensor], path: Path, form: str) -> Path:
    """Write ``state_dict`` as an official file: ``centernet`` / ``centernet_module`` (with ``optimizer``) /
    ``cornernet`` (``module.``, no num_batches_tracked) / ``cornernet_nbt`` (``module.``, with them)."""
    if form == "centernet":
        torch.save({"epoch": 140, "state_dict": state_dict}, path)
    elif form == "centernet_module":
        optimizer = {"state": {}, "param_groups": [{"lr": 1.25e-4, "params": list(range(len(state_dict)))}]}
        body = OrderedDict((f"module.{key}", value) for key, value in state_dict.items())
        torch.save({"epoch": 70, "state_dict": body, "optimizer": optimizer}, path)
    else:
        keep = form == "cornernet_nbt"
        body = OrderedDict(
            (f"module.{key}", value) for key, value in state_dict.items() if keep or "num_batches_tracked" not in key
        )
        torch.save(body, path)
    return path


def converted_detector(name: str, state_dict: dict[str, Tensor]) -> torch.nn.Module:
    data = shared(name)
    arch, backbone = INSTANCES[name], overrides(data)
    detector = build_detector(official_config(arch, backbone)).eval()
    detector.load_state_dict(convert_state_dict(arch, state_dict, backbone), strict=True)
    return detector


def assert_close(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """The README's tolerance, per output: ``max|diff| <= 1e-3 * max|expected| + 1e-5``."""
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name].shape == value.shape, name
        diff = (actual[name] - value).abs().max().item()
        assert diff <= 1e-3 * value.abs().max().item() + 1e-5, f"{name}: max|diff| {diff}"


FORMS = [
    ("centernet_resdcn18", "centernet"),
    ("centernet_resdcn18", "centernet_module"),
    ("centernet_dla34", "centernet"),
    ("centernet_hourglass_tiny", "centernet"),
    ("centernet_hourglass_tiny", "centernet_module"),
    ("cornernet_hourglass_tiny", "cornernet"),
    ("cornernet_hourglass_tiny", "cornernet_nbt"),
]


@pytest.mark.parametrize(("name", "form"), FORMS)
def test_shared_file_converts_to_the_official_outputs(name: str, form: str, tmp_path: Path) -> None:
    data = shared(name)
    path = save_official(official_state_dict(data), tmp_path / f"{name}.pth", form)
    detector = converted_detector(name, read_official(path))
    arrays = np.load(OFFICIAL / f"{name}.npz")
    with torch.no_grad():
        outputs = detector(torch.from_numpy(arrays["input"]).flip(1))[-1]  # the converted model reads RGB
    assert_close(outputs, {output: torch.from_numpy(arrays[output]) for output in data["outputs"]})


@pytest.mark.parametrize("arch", ["centernet_hourglass104", "cornernet_hourglass104"])
def test_full_size_hourglass104_loads_strictly(arch: str) -> None:
    data = shared(arch)
    # zero-stride tensors of the official shapes: no memory for the 190M official values
    state_dict = {
        key: torch.zeros((), dtype=getattr(torch, dtype)).expand(shape)
        for _, key, shape, dtype, _ in data["state_dict"]
        if not (arch.startswith("cornernet") and key.endswith("num_batches_tracked"))
    }
    converted = convert_state_dict(arch, state_dict)
    detector = build_detector(official_config(arch))
    assert list(converted) == list(detector.state_dict())
    detector.load_state_dict(converted, strict=True)


def cheap_resdcn18() -> dict[str, Tensor]:
    rows = shared("centernet_resdcn18")["state_dict"]
    return {key: torch.zeros((), dtype=getattr(torch, dtype)).expand(shape) for _, key, shape, dtype, *_ in rows}


def refused(state_dict: dict[str, Tensor], arch: str = "centernet_resdcn18") -> str:
    with pytest.raises(OfficialCheckpointError) as error:
        convert_state_dict(arch, state_dict)
    return str(error.value)


def test_mismatching_state_dicts_are_refused_with_the_keys() -> None:
    base = cheap_resdcn18()
    missing = dict(base)
    del missing["layer2.0.downsample.0.weight"], missing["deconv_layers.6.bias"]
    message = refused(missing)
    assert "missing keys (2)" in message
    assert "layer2.0.downsample.0.weight (-> backbone.stages.1.0.downsample.0.weight)" in message
    assert "deconv_layers.6.bias (DCN bias)" in message

    extra = {**base, "layer5.0.conv1.weight": torch.zeros(1), "hm.3.weight": torch.zeros(1)}
    message = refused(extra)
    assert "unexpected keys" in message and "layer5.0.conv1.weight" in message and "hm.3.weight" in message

    wrong = {**base, "hm.2.weight": torch.zeros(20, 64, 1, 1), "deconv_layers.12.bias": torch.zeros(3)}
    message = refused(wrong)
    assert "hm.2.weight: (20, 64, 1, 1) in the file, (80, 64, 1, 1) expected for heads.0.heatmap.2.weight" in message
    assert "deconv_layers.12.bias: (3,)" in message

    # another architecture's file, or the right one with the wrong reduced sizes
    assert "unexpected keys" in refused(base, "centernet_dla34")
    tiny = official_state_dict(shared("cornernet_hourglass_tiny"))
    assert "shape mismatches" in refused(tiny, "cornernet_hourglass104")


def test_extras_are_tolerated() -> None:
    base = cheap_resdcn18()
    without_counters = {key: value for key, value in base.items() if "num_batches_tracked" not in key}
    assert convert_state_dict("centernet_resdcn18", without_counters).keys() == convert_state_dict(
        "centernet_resdcn18", base
    ).keys()
    dla = {key: value for key, value in official_state_dict(shared("centernet_dla34"), seed=17).items()}
    no_classifier = {key: value for key, value in dla.items() if not key.startswith("base.fc.")}
    a, b = convert_state_dict("centernet_dla34", dla), convert_state_dict("centernet_dla34", no_classifier)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_read_official_refuses_other_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(OfficialCheckpointError, match="notes.pth"):
        read_official(text)
    pickled = tmp_path / "object.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "config": Path("/x")}, pickled)  # not weights_only-loadable
    with pytest.raises(OfficialCheckpointError, match="object.pth.*weights_only"):
        read_official(pickled)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(OfficialCheckpointError, match="list.pth: not an official checkpoint"):
        read_official(listing)


def test_official_config() -> None:
    assert len(COCO_CATEGORY_IDS) == len(set(COCO_CATEGORY_IDS)) == len(COCO_CLASS_NAMES) == 80
    assert COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
    assert (COCO_CLASS_NAMES[0], COCO_CLASS_NAMES[-1]) == ("person", "toothbrush")
    assert set(OFFICIAL_ARCHS) == {"centernet_resdcn18", "centernet_dla34", "centernet_hourglass104",
                                   "cornernet_hourglass104", "centernet_pose_dla34"}  # fmt: skip
    config = official_config("cornernet_hourglass104", {"dims": [16, 24, 32], "depth": 2, "modules": [2, 1, 2]})
    detector = config["detector"]
    assert (detector["name"], detector["num_classes"], detector["head_channels"], detector["pool_channels"]) == (
        "cornernet", 80, 16, 128)
    assert detector["category_ids"] == COCO_CATEGORY_IDS and detector["class_names"] == COCO_CLASS_NAMES
    assert config["input"]["mean"] == [0.47026115, 0.44719302, 0.40789654]
    assert config["input"]["std"] == [0.27809835, 0.27408164, 0.28863828]
    assert OFFICIAL_ARCHS["cornernet_hourglass104"]["backbone"]["dims"][0] == 256  # overrides copy
    with pytest.raises(ValueError, match="unknown backbone overrides"):
        official_config("centernet_resdcn18", {"width": 3})


# --- the independent re-implementation: faithful on the shared data, then the reference elsewhere ---------
@pytest.mark.parametrize("name", list(INSTANCES))
def test_reference_network_reproduces_the_shared_outputs(name: str) -> None:
    data = shared(name)
    reference = build_official(name, data["hyper_parameters"])
    assert [(key, list(value.shape)) for key, value in reference.state_dict().items()] == [
        (row[1], row[2]) for row in data["state_dict"]
    ]
    reference.load_state_dict(official_state_dict(data), strict=True)
    arrays = np.load(OFFICIAL / f"{name}.npz")
    with torch.no_grad():
        outputs = reference(torch.from_numpy(arrays["input"]))
    assert_close(
        {output: outputs[official] for output, official in data["output_names"].items()},
        {output: torch.from_numpy(arrays[output]) for output in data["outputs"]},
    )


@pytest.mark.parametrize("name", list(INSTANCES))
def test_conversion_holds_for_other_weights_and_inputs(name: str) -> None:
    data = shared(name)
    state_dict = official_state_dict(data, seed=17)
    reference = build_official(name, data["hyper_parameters"])
    reference.load_state_dict(state_dict, strict=True)
    detector = converted_detector(name, state_dict)
    generator = torch.Generator().manual_seed(3)
    for shape in ((1, 3, 96, 128), (2, 3, 64, 64)):
        x = torch.randn(shape, generator=generator)
        with torch.no_grad():
            expected, actual = reference(x), detector(x.flip(1))[-1]
            mirrored = reference(x.flip(1))
        assert_close(actual, {output: expected[official] for output, official in data["output_names"].items()})
        # the check has teeth: the channel order matters far beyond the tolerance for these weights
        for official in data["output_names"].values():
            gap = (mirrored[official] - expected[official]).abs().max().item()
            assert gap > 0.05 * expected[official].abs().max().item(), official


def test_a_key_both_with_and_without_module_prefix_is_refused() -> None:
    base = cheap_resdcn18()
    with pytest.raises(OfficialCheckpointError, match="'conv1.weight' appears both"):
        convert_state_dict("centernet_resdcn18", {**base, "module.conv1.weight": base["conv1.weight"]})


@pytest.mark.parametrize("name", ["cornernet_hourglass_tiny", "centernet_resdcn18"])
def test_command_line_writes_a_checkpoint_that_load_detector_rebuilds(name: str, tmp_path: Path) -> None:
    data = shared(name)
    official = save_official(official_state_dict(data), tmp_path / "official.pth", name.split("_")[0])
    output = tmp_path / "converted.ckpt"
    backbone = [f"backbone.{key}={json.dumps(value).replace(' ', '')}" for key, value in (overrides(data) or {}).items()]
    command = [sys.executable, "-m", "keypointdet.tools.convert_official", f"arch={INSTANCES[name]}",
               f"input={official}", f"output={output}", *backbone, f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert f"written to {output}" in result.stdout
    detector = load_detector(output)
    assert not detector.training and detector.class_names == COCO_CLASS_NAMES
    assert detector.letterbox.mean == [0.47026115, 0.44719302, 0.40789654]  # normalised as the official code
    arrays = np.load(OFFICIAL / f"{name}.npz")
    with torch.no_grad():
        outputs = detector(torch.from_numpy(arrays["input"]).flip(1))[-1]
    assert_close(outputs, {output: torch.from_numpy(arrays[output]) for output in data["outputs"]})
