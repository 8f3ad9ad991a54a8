"""`maskwatch detect` as a user runs it: a real subprocess, JSON Lines on stdout."""

import json
import shutil
import subprocess
import sys

import pytest

from webapp.vision.labels import LABELS


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "webapp.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_detect_json_lines_follow_the_contract(data_dir, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("maksssksksss1.jpg", "maksssksksss4.jpg"):
        shutil.copy(data_dir / "kaggle-facemask" / "images" / name, images / name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely truncated")
    (images / "notes.txt").write_text("not an image, not listed")
    single = data_dir / "maskedfacenet-maskon" / "images" / "00002_Mask.jpg"
    out = tmp_path / "annotated"
    proc = run_cli("detect", str(images), str(single), str(tmp_path / "missing.png"), "--json", "--out", str(out))
    assert proc.returncode == 1, proc.stderr  # some inputs failed
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [ln["image"] for ln in lines] == [str(images / "broken.jpg"), str(images / "maksssksksss1.jpg"),
                                           str(images / "maksssksksss4.jpg"), str(single),
                                           str(tmp_path / "missing.png")]
    errors = [ln for ln in lines if "error" in ln]
    assert len(errors) == 2 and all(set(e) == {"image", "error"} and e["error"] for e in errors)
    good = [ln for ln in lines if "error" not in ln]
    for line in good:
        assert set(line) == {"image", "width", "height", "faces", "ms"}
        assert set(line["ms"]) == {"decode", "detect", "classify", "total"}
        for face in line["faces"]:
            assert list(face) == ["box", "label", "score", "det_score"]
            assert face["label"] in LABELS and 0 <= face["score"] <= 1
            assert isinstance(face["det_score"], float) and 0 <= face["det_score"] <= 1
            x0, y0, x1, y1 = face["box"]
            assert 0 <= x0 < x1 <= line["width"] and 0 <= y0 < y1 <= line["height"]
    assert sum(len(ln["faces"]) for ln in good) >= 5
    assert sorted(p.name for p in out.iterdir()) == ["00002_Mask.jpg", "maksssksksss1.jpg", "maksssksksss4.jpg"]


def test_detect_human_output_and_success_status(data_dir):
    proc = run_cli("detect", str(data_dir / "maskedfacenet-maskon" / "images" / "00002_Mask.jpg"))
    assert proc.returncode == 0, proc.stderr
    assert "1 face(s)" in proc.stdout and "with_mask" in proc.stdout


def test_detect_with_missing_model_gives_one_clear_line(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    proc = run_cli("--model", str(tmp_path / "nomodel"), "detect", str(img))
    assert proc.returncode == 2
    assert "maskwatch: error:" in proc.stderr and "labels.json" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [[], ["detect"], ["--detector", "nope", "detect", "x.jpg"]])
def test_cli_usage_errors(args):
    proc = run_cli(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
