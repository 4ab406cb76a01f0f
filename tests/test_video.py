"""predict.py on a video file and on a camera: the drawn video, per-frame JSON lines equal to predict(), the fps."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from detector_checkpoint import ROOT, tiny_checkpoint
from omegaconf import OmegaConf

from keypointdet.data.annotations import read_image
from keypointdet.inference import load_detector, predict
from keypointdet.runs.predict import run
from keypointdet.runs.video import camera_index, is_stream

NUM_FRAMES, SIDE = 10, 64


def write_video(dataset: Path, path: Path) -> Path:
    """``NUM_FRAMES`` frames of ``SIDE x SIDE`` from the tiny dataset's validation images, as an mp4."""
    images = sorted((dataset / "val").iterdir())
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (SIDE, SIDE))
    for i in range(NUM_FRAMES):
        image = cv2.resize(read_image(images[i % len(images)]), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_frames(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while (frame := capture.read())[0]:
        frames.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


@pytest.fixture(scope="module")
def clip(tiny_dataset, tmp_path_factory):
    directory = tmp_path_factory.mktemp("video")
    return tiny_checkpoint(tiny_dataset, directory, "centernet"), write_video(tiny_dataset, directory / "clip.mp4")


def predict_cfg(**values):
    """``conf/predict.yaml`` (without its Hydra defaults) with ``values``."""
    cfg = OmegaConf.load(ROOT / "conf" / "predict.yaml")
    del cfg["defaults"]
    return OmegaConf.merge(cfg, values)


def test_video_is_drawn_and_its_detections_written_frame_by_frame(clip, tmp_path, capsys):
    ckpt_path, video = clip
    lines_path = run(predict_cfg(ckpt_path=str(ckpt_path), input=str(video), output=str(tmp_path / "out")))
    assert lines_path == tmp_path / "out" / "clip.jsonl"
    drawn = read_frames(tmp_path / "out" / "clip.mp4")
    assert len(drawn) == NUM_FRAMES and drawn[0].shape == (SIDE, SIDE, 3)
    lines = [json.loads(line) for line in lines_path.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(NUM_FRAMES))
    model = load_detector(ckpt_path)
    # the frames as the run decoded them (mp4 is lossy: not the images written)
    expected = [predict(model, frame) for frame in read_frames(video)]
    assert [line["detections"] for line in lines] == json.loads(json.dumps(expected))
    assert any(line["detections"] for line in lines)
    output = capsys.readouterr().out
    assert f"{NUM_FRAMES} frames at " in output and " frames per second" in output


def test_max_frames_stops_the_stream(clip, tmp_path):
    ckpt_path, video = clip
    lines_path = run(predict_cfg(ckpt_path=str(ckpt_path), input=str(video), output=str(tmp_path), max_frames=3))
    assert len(lines_path.read_text().splitlines()) == 3
    assert len(read_frames(tmp_path / "clip.mp4")) == 3


def test_camera_indices_and_videos_are_streams():
    assert camera_index(0) == 0 and camera_index("1") == 1 and camera_index("clip.mp4") is None
    assert is_stream(0) and is_stream("a/clip.MP4") and is_stream("x.avi")
    assert not is_stream("image.jpg") and not is_stream("a_folder/")


def test_a_camera_that_cannot_be_opened_is_an_error(clip, tmp_path):
    ckpt_path, _ = clip
    with pytest.raises(FileNotFoundError, match="cannot open camera 99"):
        run(predict_cfg(ckpt_path=str(ckpt_path), input=99, output=str(tmp_path), max_frames=2))


def test_the_input_video_is_never_overwritten(clip):
    ckpt_path, video = clip
    with pytest.raises(ValueError, match="would overwrite it"):
        run(predict_cfg(ckpt_path=str(ckpt_path), input=str(video), output=str(video.parent)))


def test_a_camera_is_written_to_the_output_folder_without_a_display(clip, tmp_path, monkeypatch):
    ckpt_path, video = clip
    opened = cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", lambda source: opened(str(video) if source == 0 else source))  # camera 0
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(cv2, "imshow", lambda *args: pytest.fail("no display: nothing may be shown"))
    lines_path = run(predict_cfg(ckpt_path=str(ckpt_path), input=0, output=str(tmp_path), max_frames=4))
    assert lines_path == tmp_path / "camera0.jsonl" and len(lines_path.read_text().splitlines()) == 4
    assert len(read_frames(tmp_path / "camera0.mp4")) == 4
