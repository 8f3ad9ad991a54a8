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
            assert list(face) == ["box", "label", "score", "det_score", "unsure"]
            assert isinstance(face["unsure"], bool)
            assert face["label"] in LABELS and 0 <= face["score"] <= 1
            assert isinstance(face["det_score"], float) and 0 <= face["det_score"] <= 1
            x0, y0, x1, y1 = face["box"]
            assert 0 <= x0 < x1 <= line["width"] and 0 <= y0 < y1 <= line["height"]
    assert sum(len(ln["faces"]) for ln in good) >= 5
    assert sorted(p.name for p in out.iterdir()) == ["00002_Mask.jpg", "maksssksksss1.jpg", "maksssksksss4.jpg"]
    assert f"annotated copies written to {out.resolve()}/ (3 image(s))" in proc.stderr  # stdout stays JSON


def test_detect_human_output_and_success_status(data_dir, tmp_path):
    proc = run_cli("detect", str(data_dir / "maskedfacenet-maskon" / "images" / "00002_Mask.jpg"),
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "1 face(s)" in proc.stdout and "with_mask" in proc.stdout
    assert f"-> {tmp_path / 'out' / '00002_Mask.jpg'}" in proc.stdout  # says where each copy went
    assert f"annotated copies written to {(tmp_path / 'out').resolve()}/ (1 image(s))" in proc.stdout


@pytest.mark.parametrize("box", [(380, 5, 398, 23), (0, 0, 20, 20), (370, 280, 399, 299), (150, 100, 180, 130)])
def test_labels_stay_inside_small_photos(box):
    """A 400x300 photo: the label of a face at any edge is drawn inside the picture."""
    from webapp.cli import label_placement
    x, y = label_placement(box, (70, 14), (400, 300))
    assert 0 <= x and x + 70 + 2 <= 400 and 0 <= y - 14 and y <= 300


def test_serve_on_a_taken_port_says_what_to_do():
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", "--port", str(port))
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr and f"--port {port + 1}" in proc.stderr
    assert "Connection in use" not in proc.stderr and "Traceback" not in proc.stderr


def test_install_script_is_quick_and_quiet_when_nothing_changed():
    """./scripts/run calls it every time: with an up-to-date .venv it must not run pip."""
    from tests.helpers import ROOT
    proc = subprocess.run([str(ROOT / "scripts" / "install")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(ROOT / "scripts" / "install")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


@pytest.mark.parametrize("model_flag_after_command", [False, True])
def test_detect_with_missing_model_gives_one_clear_line(tmp_path, model_flag_after_command):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    model = ["--model", str(tmp_path / "nomodel")]
    proc = run_cli(*(["detect", *model] if model_flag_after_command else [*model, "detect"]), str(img))
    assert proc.returncode == 2
    assert "maskwatch: error:" in proc.stderr and "labels.json" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [[], ["detect"], ["--detector", "nope", "detect", "x.jpg"]])
def test_cli_usage_errors(args):
    proc = run_cli(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
