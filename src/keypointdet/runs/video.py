"""``predict.py`` on a video file or a camera: every frame detected, drawn and written, detections as JSON lines.

``python predict.py ckpt_path=FILE input=clip.mp4 output=DIR`` writes ``DIR/clip.mp4`` (the frames with their
detections drawn) and ``DIR/clip.jsonl`` (one line per frame: ``{"frame": i, "detections": [...]}``, all
detections as :func:`keypointdet.inference.predict` returns them); ``input=0`` reads camera 0 the same way
(``camera0.mp4``, ``camera0.jsonl``) and also shows the drawn frames in a window when a display exists
(``DISPLAY`` set; ``q`` stops). ``max_frames`` stops earlier (null: at the end of the stream).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from keypointdet.drawing import Detection, draw_detections

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def camera_index(source: object) -> int | None:
    """The camera index of ``input`` (``0``, ``"1"``), or None for a path."""
    if isinstance(source, bool):
        return None
    if isinstance(source, int):
        return source
    return int(source) if isinstance(source, str) and source.isdigit() else None


def is_stream(source: object) -> bool:
    """Whether ``input`` is a camera index or a video file (by its suffix), rather than images."""
    return camera_index(source) is not None or Path(str(source)).suffix.lower() in VIDEO_SUFFIXES


def frames(capture: cv2.VideoCapture, max_frames: int | None) -> Iterator[np.ndarray]:
    """RGB uint8 frames of ``capture`` until it ends or ``max_frames`` were read."""
    count = 0
    while max_frames is None or count < max_frames:
        ok, bgr = capture.read()
        if not ok:
            return
        count += 1
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def progress_bar(total: int | None):
    """A tqdm progress bar over frames (on stderr)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True)


def predict_stream(
    source: str | int, output: str | Path, detect: Callable[[np.ndarray], list[Detection]], score_threshold: float,
    max_frames: int | None = None, show: bool | None = None, skeleton: Sequence[Sequence[int]] = (),
) -> tuple[Path, Path, float]:  # fmt: skip
    """Detect on every frame of a video file or camera ``source``; write the drawn frames (mp4) and the JSON lines
    to ``output``. ``show``: a live window (default: for a camera, when ``DISPLAY`` is set). Returns the video,
    the JSON lines file and the achieved frames per second (detection, drawing and writing included). ``skeleton``:
    the limbs drawn between a pose detector's keypoints."""
    index = camera_index(source)
    if index is None:
        path = Path(str(source))
        if not path.is_file():
            raise FileNotFoundError(f"input not found: {path}")
        capture, name = cv2.VideoCapture(str(path)), path.stem
    else:
        capture, name = cv2.VideoCapture(index), f"camera{index}"
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open {'camera ' + str(index) if index is not None else source}")
    output = Path(output)
    video_path, lines_path = output / f"{name}.mp4", output / f"{name}.jsonl"
    if index is None and video_path.resolve() == Path(str(source)).resolve():
        raise ValueError(f"output={output} is the folder of the input video: the drawn video would overwrite it")
    output.mkdir(parents=True, exist_ok=True)
    show = (index is not None and bool(os.environ.get("DISPLAY"))) if show is None else show
    rate = capture.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if index is None else None
    total = min(total, max_frames) if total and max_frames is not None else (total or max_frames)
    writer, count, start = None, 0, time.perf_counter()
    try:
        with open(lines_path, "w") as lines, progress_bar(total) as bar:
            for image in frames(capture, max_frames):
                detections = detect(image)
                drawn = cv2.cvtColor(draw_detections(image, detections, score_threshold, skeleton), cv2.COLOR_RGB2BGR)
                if writer is None:
                    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                    writer = cv2.VideoWriter(str(video_path), fourcc, rate, (drawn.shape[1], drawn.shape[0]))
                    if not writer.isOpened():
                        raise RuntimeError(f"OpenCV cannot write an mp4 (mp4v) video to {video_path}")
                writer.write(drawn)
                lines.write(json.dumps({"frame": count, "detections": detections}) + "\n")
                count += 1
                bar.update()
                if show:
                    cv2.imshow(f"keypointdet: {name}", drawn)
                    if cv2.waitKey(1) & 0xFF == ord("q"):
                        break
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if show:
            cv2.destroyAllWindows()
    fps = count / max(time.perf_counter() - start, 1e-9)
    print(f"{count} frames at {fps:.1f} frames per second: {video_path} and {lines_path} written")
    return video_path, lines_path, fps
