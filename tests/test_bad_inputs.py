"""Every bad input of issue 10 through the command line: one line, no traceback, nothing else harmed.

Each case asserts that the command prints a one-line ``error:`` naming the file (no traceback),
that the good inputs given beside the bad ones are still scored, and that no earlier result (a
run's files, its evaluation) changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fracture_lib import config
from fracture_lib.cli import main


def _run(capsys, *arguments) -> tuple[int, str, str]:
    """Run ``python -m fracture_lib`` in-process; return (exit code, stdout, stderr)."""
    code = main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``: equal digests mean no earlier result changed."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _assert_one_line_errors(err: str, count: int) -> list[str]:
    """``count`` lines on stderr, each a one-line ``error:``, and no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == count, err
    assert all(line.startswith("error: ") for line in lines), err
    return lines


@pytest.fixture(scope="module")
def models(tiny_runs, tmp_path_factory) -> Path:
    """A models folder with the tiny elbow run, evaluated (a threshold chosen), and the classifier."""
    folder = tmp_path_factory.mktemp("bad-inputs") / "models"
    for name in ("elbow", config.BODY_PART_TARGET):
        shutil.copytree(tiny_runs[name], folder / name / "tiny")
    (folder / "elbow" / "tiny" / "evaluation.json").write_text(json.dumps({"threshold": 0.4, "aggregation": "mean"}))
    return folder


@pytest.fixture(scope="module")
def good_image(tiny_demo_root: Path) -> Path:
    """One demo elbow film."""
    return sorted((tiny_demo_root / "MURA-v1.1").rglob("XR_ELBOW/*/*/image1.png"))[0]


def _bad_images(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Each bad image file and the words its error must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, str]] = {}
    (folder / "empty.png").write_bytes(b"")
    cases["empty"] = (folder / "empty.png", "empty.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    cases["corrupt"] = (folder / "corrupt.png", "corrupt.png")
    (folder / "notes.jpg").write_text("not an image at all\n")
    cases["non-image"] = (folder / "notes.jpg", "notes.jpg")
    (folder / "truncated.png").write_bytes(good.read_bytes()[:80])
    cases["truncated PNG"] = (folder / "truncated.png", "truncated.png")
    cv2.imwrite(str(folder / "blank.png"), np.zeros((300, 300), np.uint8))
    cases["blank"] = (folder / "blank.png", "image is blank")
    cv2.imwrite(str(folder / "tiny.png"), np.full((1, 1), 200, np.uint8))
    cases["tiny"] = (folder / "tiny.png", "1 x 1 pixels")
    cases["missing"] = (folder / "absent.png", "absent.png")
    (folder / "empty_study").mkdir(exist_ok=True)
    cases["empty folder"] = (folder / "empty_study", "folder has no images")
    return cases


def _odd_but_good_images(folder: Path, good: Path) -> list[Path]:
    """Inputs that are unusual but scorable: 16-bit (with and without a hot pixel), RGBA, huge."""
    folder.mkdir(parents=True, exist_ok=True)
    film = cv2.imread(str(good), cv2.IMREAD_GRAYSCALE)
    sixteen = film.astype(np.uint16) * 16 + 1000
    cv2.imwrite(str(folder / "film16_no_hot_pixel.png"), sixteen)
    sixteen[0, 0] = 65535  # one hot pixel must not flatten the contrast
    cv2.imwrite(str(folder / "film16.png"), sixteen)
    cv2.imwrite(str(folder / "film_rgba.png"), cv2.cvtColor(film, cv2.COLOR_GRAY2BGRA))
    cv2.imwrite(str(folder / "huge.png"), cv2.resize(film, (9000, 12000), interpolation=cv2.INTER_NEAREST))
    return [folder / "film16.png", folder / "film_rgba.png", folder / "huge.png", folder / "film16_no_hot_pixel.png"]


def test_predict_refuses_each_bad_image_and_scores_the_good_ones(models: Path, good_image: Path, tmp_path: Path,
                                                                 capsys) -> None:
    before = _digest(models)
    cases = _bad_images(tmp_path / "bad", good_image)
    good = [good_image, *_odd_but_good_images(tmp_path / "odd", good_image)]
    inputs = [path for path, _ in cases.values()] + good
    code, out, err = _run(capsys, "predict", *inputs, "--part", "elbow", "--models", models, "--run-name", "tiny",
                          "--json")
    assert code == 1
    lines = _assert_one_line_errors(err, len(cases))
    for (path, words), line in zip(cases.values(), lines):
        assert str(path) in line and words in line, line
    results = {item["input"]: item for item in map(json.loads, out.splitlines())}
    for path in good:
        scored = results[str(path)]
        assert scored["error"] is None and 0.0 <= scored["probability"] <= 1.0, scored
        assert scored["threshold"] == pytest.approx(0.4)
    # The 16-bit film is windowed by percentiles, not flattened by its hot pixel: it scores as the
    # same film without the hot pixel does.
    assert results[str(good[1])]["probability"] == pytest.approx(results[str(good[-1])]["probability"], abs=0.02)
    assert _digest(models) == before


def test_unknown_part_and_bad_parameters_are_one_line_errors(models: Path, good_image: Path, tiny_demo_root: Path,
                                                             tmp_path: Path, capsys) -> None:
    before = _digest(models)
    code, out, err = _run(capsys, "predict", good_image, "--part", "knee!", "--models", models)
    assert code == 2 and "unknown body part" in _assert_one_line_errors(err, 1)[0]
    for arguments, words in ((["--arch", "densenet196"], "unknown architecture 'densenet196'"),
                             (["--set", "learning_rate=fast"], "learning_rate"),
                             (["--img-size", "8"], "too small"),
                             (["--weights", str(tmp_path / "absent.weights.h5")], "absent.weights.h5")):
        code, out, err = _run(capsys, "train", "--part", "elbow", "--data", tiny_demo_root, "--epochs", "1",
                              "--models-dir", models, "--run-name", "tiny", "--verbose", "0", *arguments)
        assert code == 2 and words in _assert_one_line_errors(err, 1)[0], err
    assert _digest(models) == before


def test_data_source_errors_name_the_file(tmp_path: Path, capsys) -> None:
    out_csv = tmp_path / "index.csv"
    out_csv.write_text("earlier index\n")
    code, out, err = _run(capsys, "index", tmp_path / "absent.csv", "--out", out_csv)
    assert code == 2 and "absent.csv" in _assert_one_line_errors(err, 1)[0]
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label\n../outside.png,1\n")
    code, out, err = _run(capsys, "index", manifest, "--out", out_csv)
    line = _assert_one_line_errors(err, 1)[0]
    assert code == 2 and "line 2" in line and "escapes the manifest's folder" in line
    (tmp_path / "data" / "wrong_layout").mkdir()
    code, out, err = _run(capsys, "index", tmp_path / "data" / "wrong_layout", "--out", out_csv)
    assert code == 2 and "wrong_layout" in _assert_one_line_errors(err, 1)[0]
    # A failed command never replaces the earlier output.
    assert out_csv.read_text() == "earlier index\n"


def test_label_contradicting_its_folder_and_blank_training_films(tiny_demo_root: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo_root, root)
    out_csv = tmp_path / "index.csv"
    out_csv.write_text("earlier index\n")
    # A study whose labels CSV says normal while its folder says positive: refused, naming it.
    labels_csv = root / "MURA-v1.1" / "train_labeled_studies.csv"
    lines = labels_csv.read_text().splitlines()
    flipped = next(number for number, line in enumerate(lines) if "_positive/," in line)
    lines[flipped] = lines[flipped].rsplit(",", 1)[0] + ",0"
    labels_csv.write_text("\n".join(lines) + "\n")
    code, out, err = _run(capsys, "index", root, "--out", out_csv)
    line = _assert_one_line_errors(err, 1)[0]
    assert code == 2 and "contradicts the folder name" in line and lines[flipped].split(",")[0].rstrip("/") in line
    labels_csv.write_text("\n".join(lines[:flipped] + [lines[flipped][:-1] + "1"] + lines[flipped + 1:]) + "\n")
    # A blank film among the training images: found by --verify-images, and dropped with --drop-missing.
    blank = sorted((root / "MURA-v1.1" / "train").rglob("*.png"))[0]
    cv2.imwrite(str(blank), np.full((256, 256), 12, np.uint8))
    code, out, err = _run(capsys, "index", root, "--out", out_csv, "--verify-images")
    line = _assert_one_line_errors(err, 1)[0]
    assert code == 2 and "1 blank" in line and blank.name in line and "--drop-missing" in line
    assert out_csv.read_text() == "earlier index\n"
    code, out, err = _run(capsys, "index", root, "--out", out_csv, "--verify-images", "--drop-missing")
    assert code == 0 and str(blank.relative_to(root)) not in out_csv.read_text()


def test_corrupt_evaluation_is_listed_and_refused(models: Path, good_image: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    (copy / "elbow" / "tiny" / "evaluation.json").write_text("{truncated")
    code, out, err = _run(capsys, "models", "--models", copy)
    assert code == 0 and "error: elbow/tiny:" in out and "body_part" in out and "Traceback" not in err
    code, out, err = _run(capsys, "predict", good_image, "--part", "elbow", "--models", copy, "--run-name", "tiny")
    assert code == 1 and "evaluation.json" in _assert_one_line_errors(err, 1)[0]


def test_dicom_variants_through_predict(models: Path, good_image: Path, tmp_path: Path, capsys) -> None:
    from dicom_fixtures import PATIENT_NAME, write_dicom
    from pydicom.uid import RLELossless

    film = cv2.imread(str(good_image), cv2.IMREAD_GRAYSCALE)
    same = write_dicom(tmp_path / "same.dcm", film)
    inverted = write_dicom(tmp_path / "inverted.dcm", (255 - film).astype(np.uint8), photometric="MONOCHROME1")
    compressed = write_dicom(tmp_path / "rle.dcm", film, compress=RLELossless)
    sixteen = write_dicom(tmp_path / "sixteen.dcm", film.astype(np.uint16) * 16, bits_stored=12)
    frames = write_dicom(tmp_path / "frames.dcm", np.stack([film, film]), NumberOfFrames=2)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 64)
    before = _digest(models)
    code, out, err = _run(capsys, "predict", good_image, same, inverted, compressed, sixteen, frames, garbage,
                          "--part", "elbow", "--models", models, "--run-name", "tiny", "--json")
    assert code == 1
    lines = _assert_one_line_errors(err, 2)
    assert str(frames) in lines[0] and "multi-frame" in lines[0] and str(garbage) in lines[1]
    assert PATIENT_NAME not in err + out  # no patient data in any message
    results = {item["input"]: item for item in map(json.loads, out.splitlines())}
    png_probability = results[str(good_image)]["probability"]
    # A DICOM made from the PNG (plain, MONOCHROME1-inverted, RLE-compressed) gives the same probability.
    for path in (same, inverted, compressed):
        assert results[str(path)]["probability"] == pytest.approx(png_probability, abs=1e-6), path
    assert results[str(sixteen)]["error"] is None
    assert _digest(models) == before
