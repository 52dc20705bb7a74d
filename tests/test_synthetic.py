"""Tests of the synthetic MURA-layout demo dataset: layout, CSV format, determinism, balance."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fracture_lib import config, findings, phantoms, synthetic
from fracture_lib.findings import FRACTURE_KINDS, HARDWARE, NO_FINDING
from fracture_lib.errors import ParameterError


def _read_split(root: Path, mura_split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The image and study CSVs of one split, read the way MURA's are (no header)."""
    mura_dir = root / config.MURA_DIRNAME
    images = pd.read_csv(mura_dir / f"{mura_split}_image_paths.csv", header=None, names=["path"])
    studies = pd.read_csv(mura_dir / f"{mura_split}_labeled_studies.csv", header=None, names=["study", "label"])
    return images, studies


def _hashes(root: Path) -> dict[str, str]:
    """The sha256 of every file under the data root, keyed by relative path."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != synthetic.MARKER_FILENAME
    }


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo set shared by the read-only tests of this module."""
    return synthetic.generate_demo_dataset(tmp_path_factory.mktemp("demo") / "root", patients=24, seed=3)


def test_layout_and_csv_format(small_root: Path) -> None:
    mura_dir = small_root / config.MURA_DIRNAME
    for mura_split in ("train", "valid"):
        first_line = (mura_dir / f"{mura_split}_image_paths.csv").read_text().splitlines()[0]
        assert first_line.startswith(f"MURA-v1.1/{mura_split}/XR_") and first_line.endswith(".png")
        first_study = (mura_dir / f"{mura_split}_labeled_studies.csv").read_text().splitlines()[0]
        assert first_study.startswith(f"MURA-v1.1/{mura_split}/XR_") and first_study[-3:] in ("/,0", "/,1")
        images, studies = _read_split(small_root, mura_split)
        assert len(images) > 0 and len(studies) > 0
        for path in images["path"]:
            assert (small_root / path).is_file(), path
            parts = path.split("/")
            assert parts[2] in ("XR_ELBOW", "XR_HAND", "XR_SHOULDER")
            assert parts[3].startswith("patient") and len(parts[3]) == len("patient00001")
            assert parts[5].startswith("image")
        # Labels match the folder suffixes, and every image belongs to a listed study.
        expected = studies["study"].str.contains("_positive/").astype(int)
        assert (studies["label"] == expected).all()
        assert set(images["path"].str.rsplit("/", n=1).str[0] + "/") == set(studies["study"])
        views = images.groupby(images["path"].str.rsplit("/", n=1).str[0]).size()
        assert views.between(1, 4).all()


def test_patients_disjoint_and_valid_numbered_after_train(small_root: Path) -> None:
    train_images, _ = _read_split(small_root, "train")
    valid_images, _ = _read_split(small_root, "valid")
    train_patients = set(train_images["path"].str.split("/").str[3])
    valid_patients = set(valid_images["path"].str.split("/").str[3])
    assert train_patients.isdisjoint(valid_patients)
    assert max(train_patients) < min(valid_patients)


def test_images_are_8bit_grey_in_size_range(small_root: Path) -> None:
    images, _ = _read_split(small_root, "train")
    shapes = set()
    for path in images["path"][:40]:
        image = cv2.imread(str(small_root / path), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.ndim == 2
        assert 300 <= max(image.shape) <= 512
        shapes.add(image.shape)
    assert len(shapes) > 5


def test_boxes_inside_images_and_only_for_positives(small_root: Path) -> None:
    boxes = synthetic.load_fracture_boxes(small_root)
    assert list(boxes.columns) == ["path", "x_min", "y_min", "x_max", "y_max"]
    assert len(boxes) > 0
    for row in boxes.itertuples():
        assert "_positive/" in row.path
        height, width = cv2.imread(str(small_root / row.path), cv2.IMREAD_GRAYSCALE).shape
        assert 0 <= row.x_min < row.x_max <= width and 0 <= row.y_min < row.y_max <= height
    # Every positive study shows its abnormality on at least one view: a boxed fracture or hardware.
    table = synthetic.load_findings(small_root)
    shown = table[table["finding"] != NO_FINDING]
    positive_studies = set()
    for mura_split in ("train", "valid"):
        _, studies = _read_split(small_root, mura_split)
        positive_studies |= set(studies.loc[studies["label"] == 1, "study"].str.rstrip("/"))
    assert set(shown["path"].str.rsplit("/", n=1).str[0]) == positive_studies
    assert set(boxes["path"]) <= set(shown["path"])


def test_findings_file_matches_the_images(small_root: Path) -> None:
    table = synthetic.load_findings(small_root)
    listed = pd.concat([_read_split(small_root, mura_split)[0] for mura_split in ("train", "valid")])
    assert sorted(table["path"]) == sorted(listed["path"])
    known = {NO_FINDING, HARDWARE, *FRACTURE_KINDS,
             *(f"{kind}+plate" for kind in FRACTURE_KINDS)}
    assert set(table["finding"]) <= known
    # Normal studies show nothing; fractures (and only they) have a box.
    normal = table["path"].str.contains("_negative/")
    assert (table.loc[normal, "finding"] == NO_FINDING).all()
    boxed = set(synthetic.load_fracture_boxes(small_root)["path"])
    fractured = table["finding"].str.split("+").str[0].isin(FRACTURE_KINDS)
    assert set(table.loc[fractured, "path"]) == boxed


def _contrast_in_box(part: str, difficulty: float, seed: int) -> float:
    """Mean absolute grey-level change a fracture makes inside its box, the rest of the film alike."""
    fractured, box, _ = phantoms.render_view(np.random.default_rng(seed), part, 0, "fracture", difficulty)
    plain, _, _ = phantoms.render_view(np.random.default_rng(seed), part, 0, NO_FINDING, difficulty)
    x0, y0, x1, y1 = (int(round(value)) for value in box)
    return float(np.abs(fractured[y0:y1, x0:x1].astype(float) - plain[y0:y1, x0:x1]).mean())


def test_difficulty_makes_fractures_subtler() -> None:
    for part in synthetic.DEMO_PARTS:
        easy = np.mean([_contrast_in_box(part, 0.1, seed) for seed in range(8)])
        hard = np.mean([_contrast_in_box(part, 0.9, seed) for seed in range(8)])
        assert easy > 1.5 * hard, (part, easy, hard)


def test_is_synthetic(small_root: Path, tmp_path: Path) -> None:
    assert synthetic.is_synthetic(small_root)
    assert not synthetic.is_synthetic(tmp_path)
    assert synthetic.load_fracture_boxes(tmp_path).empty


def test_deterministic_for_a_seed(small_root: Path, tmp_path: Path) -> None:
    again = synthetic.generate_demo_dataset(tmp_path / "again", patients=24, seed=3)
    assert _hashes(again) == _hashes(small_root)
    other = synthetic.generate_demo_dataset(tmp_path / "other", patients=24, seed=4)
    assert _hashes(other) != _hashes(small_root)


def test_class_balance_close_to_mura() -> None:
    studies = synthetic._plan_patients(3000, 7, synthetic.DEMO_PARTS)
    frame = pd.DataFrame([vars(study) for study in studies])
    shares = frame.groupby("part")["label"].mean()
    for part, share in synthetic.ABNORMAL_SHARE.items():
        assert abs(shares[part] - share) < 0.05, (part, shares[part])
    valid_share = frame.loc[frame["mura_split"] == "valid", "patient_number"].nunique() / 3000
    assert 0.07 <= valid_share <= 0.11
    assert frame.groupby("patient_number").size().max() > 1


def test_ensure_reuses_or_regenerates(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    synthetic.ensure_demo_dataset(root, patients=6, seed=1)
    marker = root / config.MURA_DIRNAME / synthetic.MARKER_FILENAME
    first = marker.read_text()
    # No parameters: reuse whatever set is there, whatever its size.
    assert synthetic.ensure_demo_dataset(root) == root
    assert marker.read_text() == first
    # The same parameters: reuse; other parameters: regenerate.
    synthetic.ensure_demo_dataset(root, patients=6, seed=1)
    assert marker.read_text() == first
    synthetic.ensure_demo_dataset(root, patients=7, seed=1)
    assert synthetic.demo_parameters(root)["patients"] == 7
    assert not list(tmp_path.glob(".demo.*")), "no temporary folder is left behind"


def test_bad_arguments_raise_parameter_error(tmp_path: Path) -> None:
    with pytest.raises(ParameterError):
        synthetic.generate_demo_dataset(tmp_path / "bad", patients=5, parts=("knee",))
    with pytest.raises(ParameterError):
        synthetic.generate_demo_dataset(tmp_path / "bad", patients=5, parts=("wrist",))
    with pytest.raises(ParameterError):
        synthetic.generate_demo_dataset(tmp_path / "bad", patients=0)
    with pytest.raises(ParameterError, match="difficulty"):
        synthetic.generate_demo_dataset(tmp_path / "bad", patients=5, difficulty=1.5)
    assert not (tmp_path / "bad").exists()


def test_the_hand_is_drawn_easier_than_the_difficulty_asked_for() -> None:
    # PART_EASE: the hand at difficulty d is drawn at d - 0.2 (at least 0), the other parts at d.
    def film(part: str, difficulty: float) -> np.ndarray:
        return phantoms.render_view(np.random.default_rng(5), part, 1, "fracture", difficulty)[0]

    assert findings.PART_EASE["hand"] == pytest.approx(0.2)
    assert np.array_equal(film("hand", 0.15), film("hand", 0.0))  # both drawn at 0
    assert not np.array_equal(film("hand", 0.5), film("hand", 0.3))
    assert not np.array_equal(film("elbow", 0.15), film("elbow", 0.0))
    assert findings.part_difficulty("hand", 0.5) == pytest.approx(0.3)
    assert findings.part_difficulty("shoulder", 0.1) == 0.1


def _label_files(folder: Path) -> Path:
    """MURA-style label files of five studies (three parts, both MURA splits), as MURA spells them."""
    folder.mkdir(parents=True)
    train = ["MURA-v1.1/train/XR_WRIST/patient00001/study1_positive", "MURA-v1.1/train/XR_WRIST/patient00002/study1_negative",
             "MURA-v1.1/train/XR_HUMERUS/patient00003/study1_positive"]
    valid = ["MURA-v1.1/valid/XR_ELBOW/patient11186/study1_negative", "MURA-v1.1/valid/XR_ELBOW/patient11186/study2_positive"]
    views = {train[0]: 3, train[1]: 2, train[2]: 1, valid[0]: 2, valid[1]: 1}
    for mura_split, studies in (("train", train), ("valid", valid)):
        (folder / f"{mura_split}_image_paths.csv").write_text(
            "".join(f"{study}/image{view}.png\n" for study in studies for view in range(1, views[study] + 1)))
        (folder / f"{mura_split}_labeled_studies.csv").write_text(
            "".join(f"{study}/,{int(study.endswith('positive'))}\n" for study in studies))
    return folder


def test_a_tree_laid_out_from_mura_label_files(tmp_path: Path) -> None:
    from fracture_lib import datasets

    labels = _label_files(tmp_path / "csv")
    root = synthetic.generate_from_label_files(labels, tmp_path / "tree", long_side=96, workers=1)
    mura_dir = root / config.MURA_DIRNAME
    # The label files are MURA's, exactly; every film exists, grey, with a long side of 96 px.
    for name in synthetic.LABEL_FILES:
        assert (mura_dir / name).read_text() == (labels / name).read_text()
    paths = [line for name in ("train_image_paths.csv", "valid_image_paths.csv")
             for line in (labels / name).read_text().split()]
    assert len(paths) == 9
    for path in paths:
        image = cv2.imread(str(root / path), cv2.IMREAD_UNCHANGED)
        assert image.ndim == 2 and image.dtype == np.uint8 and max(image.shape) == 96
    assert synthetic.is_synthetic(root) and synthetic.demo_parameters(root)["images"] == 9
    index = datasets.build_index(root, seed=0)
    assert len(index) == 9 and set(index["body_part"]) == {"wrist", "humerus", "elbow"}
    # Each film carries its study's label from the label files.
    expected = {}
    for name in ("train_labeled_studies.csv", "valid_labeled_studies.csv"):
        for line in (labels / name).read_text().split():
            study, label = line.split(",")
            expected[study.rstrip("/")] = int(label)
    found = {str(study).rstrip("/"): int(label) for study, label in index.groupby("study")["label"].first().items()}
    assert found == expected and sorted(set(expected.values())) == [0, 1]
    # --limit keeps whole studies, in file order, until that many films.
    limited = synthetic.generate_from_label_files(labels, tmp_path / "limited", limit=4, long_side=96, workers=1)
    assert (limited / config.MURA_DIRNAME / "train_image_paths.csv").read_text().count("\n") == 5
    assert (limited / config.MURA_DIRNAME / "valid_image_paths.csv").read_text() == ""


def test_label_files_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    from fracture_lib.errors import DataLayoutError

    labels = _label_files(tmp_path / "csv")
    (labels / "valid_labeled_studies.csv").unlink()
    with pytest.raises(DataLayoutError, match="valid_labeled_studies.csv is missing"):
        synthetic.generate_from_label_files(labels, tmp_path / "tree")
    labels = _label_files(tmp_path / "csv2")
    (labels / "train_labeled_studies.csv").write_text("MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/,1\n")
    with pytest.raises(DataLayoutError, match="patient00002/study1_negative/image1.png .* has no study"):
        synthetic.generate_from_label_files(labels, tmp_path / "tree")
    with pytest.raises(ParameterError, match="limit=0"):
        synthetic.generate_from_label_files(labels, tmp_path / "tree", limit=0)
    assert not (tmp_path / "tree").exists()


def test_a_failed_layout_run_leaves_no_staging_and_keeps_the_earlier_tree(tmp_path: Path, monkeypatch) -> None:
    labels = _label_files(tmp_path / "csv")
    root = synthetic.generate_from_label_files(labels, tmp_path / "tree", long_side=96, workers=1)
    before = (root / config.MURA_DIRNAME / synthetic.MARKER_FILENAME).read_text()

    def fail(job):
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "_write_labelled_studies", fail)
    with pytest.raises(OSError, match="disk full"):
        synthetic.generate_from_label_files(labels, tmp_path / "tree", long_side=96, workers=1)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["csv", "tree"]
    assert (root / config.MURA_DIRNAME / synthetic.MARKER_FILENAME).read_text() == before


def test_demo_data_refuses_layout_options_without_layout_from(tmp_path: Path, capsys) -> None:
    from fracture_lib import cli

    for option in (["--limit", "5"], ["--long-side", "96"]):
        assert cli.main(["demo-data", str(tmp_path / "tree"), *option]) != 0
        assert "only apply with --layout-from" in capsys.readouterr().err
    assert not (tmp_path / "tree").exists()
