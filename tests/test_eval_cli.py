"""eval.py and predict.py from the command line, on checkpoints of both detectors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import pytest
from detector_checkpoint import ROOT, tiny_checkpoint

from keypointdet.data.coco import load_coco
from keypointdet.metrics import STAT_NAMES, evaluate_detections


def run_script(script: str, *arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *arguments], check=False, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("model", ["centernet", "cornernet"])
def test_eval_prints_the_coco_table_and_writes_metrics_and_full_precision_results(model, tiny_dataset, tmp_path):
    ckpt_path = tiny_checkpoint(tiny_dataset, tmp_path, model)
    output = tmp_path / "eval"
    stdout = run_script(
        "eval.py", f"ckpt_path={ckpt_path}", "trainer=cpu", "model.tta.flip=true", f"hydra.run.dir={output}",
        "trainer.enable_progress_bar=false",
    )
    metrics = json.loads((output / "metrics.json").read_text())
    coco = load_coco(tiny_dataset / "val.json")
    class_names = [category["name"] for category in coco.loadCats(coco.getCatIds())]
    assert set(metrics) == {f"val/{name}" for name in STAT_NAMES} | {f"val/AP/{name}" for name in class_names}
    for name in [*STAT_NAMES, *(f"AP/{name}" for name in class_names)]:
        assert f"{name:>12s}  {metrics[f'val/{name}']:.4f}" in stdout
    assert stdout.strip().splitlines()[-1] == f"val/mAP={metrics['val/mAP']:.4f} val/mAP50={metrics['val/mAP50']:.4f}"

    results = json.loads((output / "results.json").read_text())
    assert {detection["image_id"] for detection in results} <= set(coco.getImgIds())
    assert all(set(detection) == {"image_id", "category_id", "bbox", "score"} for detection in results)
    assert any(len(repr(detection["score"])) > 8 for detection in results)  # not rounded
    per_image = defaultdict(list)
    for detection in results:
        per_image[detection["image_id"]].append(detection)
    recomputed = evaluate_detections(coco, {image_id: per_image[image_id] for image_id in coco.getImgIds()})
    assert {f"val/{name}": value for name, value in recomputed.items()} == pytest.approx(metrics, abs=1e-7)


@pytest.mark.slow  # a subprocess start-up (~14 s) for one message; config_checks tests the missing-file case in make test
def test_eval_without_checkpoint_names_the_missing_argument(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"hydra.run.dir={tmp_path}"],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "ckpt_path=FILE" in result.stderr


@pytest.mark.slow  # ~14 s; the documented predict commands on a folder run in make test
def test_predict_cli_draws_every_image_of_a_folder(tiny_dataset, tmp_path):
    ckpt_path = tiny_checkpoint(tiny_dataset, tmp_path, "centernet")
    output = tmp_path / "drawn"
    stdout = run_script(
        "predict.py", f"ckpt_path={ckpt_path}", f"input={tiny_dataset / 'val'}", f"output={output}",
        f"hydra.run.dir={tmp_path / 'run'}", "score_threshold=0.05",
    )
    names = sorted(path.name for path in (tiny_dataset / "val").iterdir())
    detections = json.loads((output / "detections.json").read_text())
    assert sorted(detections) == names
    assert sorted(path.name for path in output.glob("*.png")) == sorted(f"{name.rsplit('.', 1)[0]}.png" for name in names)
    assert f"{len(names)} images" in stdout
