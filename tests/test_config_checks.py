"""Configuration values that cannot work are refused at start-up with one line (README: "Refused at start-up")."""

from __future__ import annotations

import pytest

from keypointdet.config_checks import ConfigError, check_training_config
from keypointdet.runs.train import train

# one row of the README table each: (overrides, what the message says)
REFUSED = [
    (["model.loss.alpha=-1"], "model.loss.alpha=-1"),
    (["model.loss.beta=-0.5"], "model.loss.beta=-0.5"),
    (["model=cornernet", "model.loss.alpha=-2"], "model.loss.alpha=-2"),
    (["model.targets.min_overlap=0"], r"min_overlap=0: must be in \(0, 1\)"),
    (["model.targets.min_overlap=1.2"], r"min_overlap=1.2: must be in \(0, 1\)"),
    (["model.targets.max_objects=0"], "max_objects=0: must be >= 1"),
    (["model.k=0"], "model.k=0: must be >= 1"),
    (["model.tta.scales=[1.0,0]"], r"model.tta.scales=\[1.0, 0\]: every scale must be > 0"),
    (["data.input_size=100"], "data.input_size=100: must be a multiple of the backbone's size divisor 32 \\(e.g. 96\\)"),
    (["data.batch_size=0"], "data.batch_size=0: must be >= 1"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path=/nonexistent/last.ckpt: no such file"),
    (["model.targets.radius_variant=official"], "radius_variant=official: must be one of corrected, centernet"),
    (
        ["model=cornernet", "backbone._target_=torchvision.models.resnet18"],
        r"backbone._target_=torchvision.models.resnet18: not a keypointdet backbone \(a class in keypointdet.models",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED, ids=[" ".join(row[0]) for row in REFUSED])
def test_a_value_that_cannot_work_is_refused_with_one_line_naming_it(compose_train, overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        check_training_config(compose_train(*overrides))
    assert "\n" not in str(error.value)


def test_every_default_and_paper_recipe_passes(compose_train):
    # the CornerNet recipe's data.batch_size (per device) 6 is smaller than its 8 devices: not a refusal
    for overrides in ([], ["model=cornernet"], ["backbone=hourglass_small", "data.input_size=100"],
                      ["model=cornernet", "backbone=resnet18"], ["model=cornernet", "backbone=dla34"],
                      ["experiment=centernet_dla34_coco"], ["experiment=cornernet_hourglass104_coco"],
                      ["data=coco"], ["data=voc", "model=cornernet"]):  # fmt: skip
        check_training_config(compose_train(*overrides))


def test_train_refuses_before_reading_any_data(compose_train, tmp_path):
    cfg = compose_train("model.k=0", f"data.root={tmp_path / 'no_dataset'}", "data.generate=null")
    with pytest.raises(ConfigError, match="model.k=0"):
        train(cfg)
    assert not (tmp_path / "no_dataset").exists()
