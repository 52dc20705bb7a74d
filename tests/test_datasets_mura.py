"""The MURA index: official CSV parsing, folder walking, validation and the patient-level split."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fracture_lib import cli, datasets
from fracture_lib.errors import DataLayoutError, ParameterError

# (MURA split, body part, patient number, study number, label, number of views). Patient 1 has
# studies of two body parts; patient 2 has a normal and an abnormal study of the same part.
STUDIES = [
    ("train", "elbow", 1, 1, 1, 2),
    ("train", "hand", 1, 1, 0, 1),
    ("train", "elbow", 2, 1, 0, 3),
    ("train", "elbow", 2, 2, 1, 1),
    *[("train", part, number, 1, number % 2, 1 + number % 3)
      for number in range(3, 27) for part in [("elbow", "hand", "shoulder")[number % 3]]],
    ("valid", "elbow", 101, 1, 1, 2),
    ("valid", "hand", 102, 1, 0, 1),
    ("valid", "shoulder", 103, 1, 1, 3),
    ("valid", "shoulder", 104, 1, 0, 2),
]


def study_folder(mura_split: str, part: str, patient: int, study: int, label: int) -> str:
    """The study path relative to the data root, as MURA writes it (without trailing slash)."""
    suffix = "positive" if label else "negative"
    return f"MURA-v1.1/{mura_split}/XR_{part.upper()}/patient{patient:05d}/study{study}_{suffix}"


def write_mura(root: Path, studies=STUDIES, with_csv: bool = True, header: bool = False) -> Path:
    """Write a tiny MURA tree (64-px noise PNGs) and, optionally, its four official CSVs."""
    rng = np.random.default_rng(0)
    image_lines = {"train": [], "valid": []}
    study_lines = {"train": [], "valid": []}
    for mura_split, part, patient, study, label, views in studies:
        folder = study_folder(mura_split, part, patient, study, label)
        (root / folder).mkdir(parents=True, exist_ok=True)
        for view in range(1, views + 1):
            image = rng.integers(0, 256, size=(64 + view, 64), dtype=np.uint8)
            assert cv2.imwrite(str(root / folder / f"image{view}.png"), image)
            image_lines[mura_split].append(f"{folder}/image{view}.png")
        study_lines[mura_split].append(f"{folder}/,{label}")
    if with_csv:
        for mura_split in ("train", "valid"):
            write_lines(root / "MURA-v1.1" / f"{mura_split}_image_paths.csv", image_lines[mura_split],
                        "image_path" if header else None)
            write_lines(root / "MURA-v1.1" / f"{mura_split}_labeled_studies.csv", study_lines[mura_split],
                        "study,label" if header else None)
    return root


def write_lines(path: Path, lines: list[str], header: str | None = None) -> None:
    """Write CSV lines the way MURA's files are written (no header unless given)."""
    path.write_text("".join(f"{line}\n" for line in ([header] if header else []) + lines))


def remove_csvs(root: Path) -> None:
    """Delete the four official CSVs so the index is built from the folders."""
    for path in (root / "MURA-v1.1").glob("*_*.csv"):
        path.unlink()


@pytest.fixture()
def mura_root(tmp_path: Path) -> Path:
    return write_mura(tmp_path / "data")


def test_official_format_is_parsed(mura_root: Path) -> None:
    index = datasets.build_index(mura_root)
    assert list(index.columns) == datasets.INDEX_COLUMNS
    assert len(index) == sum(study[-1] for study in STUDIES)
    assert index["path"].is_monotonic_increasing
    first = index.iloc[0]
    assert first["path"] == "MURA-v1.1/train/XR_ELBOW/patient00001/study1_positive/image1.png"
    assert first["study"] == "MURA-v1.1/train/XR_ELBOW/patient00001/study1_positive"
    assert (first["source_split"], first["body_part"], first["patient"]) == ("train", "elbow", "patient00001")
    assert (int(first["view"]), int(first["label"])) == (1, 1)
    assert index["view"].dtype == np.int64 and index["label"].dtype == np.int64
    assert index["study"].nunique() == len(STUDIES)
    assert set(index["body_part"]) == {"elbow", "hand", "shoulder"}
    # MURA's valid split is the test set; MURA's train split is divided into train and val.
    assert (index.loc[index["source_split"] == "valid", "split"] == "test").all()
    assert set(index.loc[index["source_split"] == "train", "split"]) == {"train", "val"}


def test_csvs_with_header_row_give_the_same_table(mura_root: Path, tmp_path: Path) -> None:
    with_header = write_mura(tmp_path / "with-header", header=True)
    pd.testing.assert_frame_equal(datasets.build_index(with_header), datasets.build_index(mura_root))


def test_csv_route_equals_folder_route(mura_root: Path) -> None:
    from_csv = datasets.build_index(mura_root, seed=3)
    remove_csvs(mura_root)
    # Hidden files (macOS resource forks, .DS_Store) are not images.
    study = mura_root / study_folder("train", "elbow", 1, 1, 1)
    (study / "._image1.png").write_bytes(b"\x00\x05")
    (mura_root / "MURA-v1.1" / "train" / ".DS_Store").write_bytes(b"")
    from_folders = datasets.build_index(mura_root, seed=3)
    pd.testing.assert_frame_equal(from_folders, from_csv)


def test_csv_route_equals_folder_route_on_demo_data(tiny_demo_root: Path, tmp_path: Path) -> None:
    official = shutil.ignore_patterns("*_image_paths.csv", "*_labeled_studies.csv")
    copy = tmp_path / "demo"
    shutil.copytree(tiny_demo_root / "MURA-v1.1", copy / "MURA-v1.1", ignore=official)
    assert not list((copy / "MURA-v1.1").glob("*_image_paths.csv"))
    from_csv = datasets.build_index(tiny_demo_root)
    pd.testing.assert_frame_equal(datasets.build_index(copy), from_csv)
    assert set(from_csv["split"]) == {"train", "val", "test"}
    datasets.check_patient_disjoint(from_csv)


def test_label_contradicting_the_folder_is_reported(mura_root: Path) -> None:
    labels_csv = mura_root / "MURA-v1.1" / "train_labeled_studies.csv"
    lines = labels_csv.read_text().splitlines()
    lines[0] = lines[0].replace(",1", ",0")  # study1_positive labelled 0
    write_lines(labels_csv, lines)
    with pytest.raises(DataLayoutError, match=r"1 stud\(ies\) have a label that contradicts the folder name.*study1_positive"):
        datasets.build_index(mura_root)


def test_missing_file_is_reported_or_dropped(mura_root: Path) -> None:
    complete = datasets.build_index(mura_root)
    missing = mura_root / study_folder("train", "elbow", 2, 1, 0) / "image2.png"
    missing.unlink()
    with pytest.raises(DataLayoutError, match=r"1 missing on disk \(e\.g\. .*patient00002/study1_negative/image2\.png\).*--drop-missing"):
        datasets.build_index(mura_root)
    with pytest.warns(UserWarning, match=r"dropped 1 of \d+ images"):
        dropped = datasets.build_index(mura_root, drop_missing=True)
    assert len(dropped) == len(complete) - 1
    assert not dropped["path"].str.endswith("patient00002/study1_negative/image2.png").any()
    # The other rows keep their split: dropping a file does not reshuffle the patients.
    kept = complete[complete["path"].isin(dropped["path"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(dropped, kept)


def test_unreadable_image_is_found_with_verify_images(mura_root: Path) -> None:
    broken = mura_root / study_folder("valid", "shoulder", 103, 1, 1) / "image3.png"
    broken.write_bytes(b"not a png")
    assert len(datasets.build_index(mura_root)) == sum(study[-1] for study in STUDIES)
    with pytest.raises(DataLayoutError, match=r"1 unreadable .*patient00103/study1_positive/image3\.png"):
        datasets.build_index(mura_root, verify_images=True)
    with pytest.warns(UserWarning, match=r"dropped 1 of"):
        index = datasets.build_index(mura_root, verify_images=True, drop_missing=True)
    assert len(index) == sum(study[-1] for study in STUDIES) - 1


def test_blank_and_tiny_images_are_found_with_verify_images(mura_root: Path) -> None:
    # The same rule as predict's: under 64 px a side, or 98% of the pixels within 8 grey levels.
    blank = mura_root / study_folder("valid", "shoulder", 103, 1, 1) / "image3.png"
    tiny = mura_root / study_folder("train", "hand", 1, 1, 0) / "image1.png"
    assert cv2.imwrite(str(blank), np.full((300, 200), 40, np.uint8))
    assert cv2.imwrite(str(tiny), np.full((20, 30), 40, np.uint8))
    with pytest.raises(DataLayoutError, match=r"1 blank \(e\.g\. .*patient00103/study1_positive/image3\.png\); "
                                              r"1 under 64 px a side \(e\.g\. .*patient00001/study1_negative/image1\.png"):
        datasets.build_index(mura_root, verify_images=True)
    with pytest.warns(UserWarning, match=r"dropped 2 of"):
        index = datasets.build_index(mura_root, verify_images=True, drop_missing=True)
    assert not index["path"].isin([str(path.relative_to(mura_root)) for path in (blank, tiny)]).any()
    assert len(index) == sum(study[-1] for study in STUDIES) - 2


@pytest.mark.parametrize("bad_line", [
    "../outside/image1.png",
    "MURA-v1.1/train/../../outside/image1.png",
    "/etc/passwd",
    "C:\\MURA-v1.1\\train\\XR_HAND\\patient00001\\study1_negative\\image1.png",
])
def test_path_escaping_the_root_is_rejected(mura_root: Path, bad_line: str) -> None:
    images_csv = mura_root / "MURA-v1.1" / "train_image_paths.csv"
    write_lines(images_csv, images_csv.read_text().splitlines() + [bad_line])
    with pytest.raises(DataLayoutError, match=r"train_image_paths\.csv: 1 path\(s\) escape the data root"):
        datasets.build_index(mura_root)


def test_malformed_path_and_bad_label_are_reported(mura_root: Path) -> None:
    images_csv = mura_root / "MURA-v1.1" / "valid_image_paths.csv"
    write_lines(images_csv, images_csv.read_text().splitlines() + ["MURA-v1.1/valid/XR_HAND/patient00102/notes.txt"])
    with pytest.raises(DataLayoutError, match=r"valid_image_paths\.csv: 1 path\(s\) do not follow MURA's layout"):
        datasets.build_index(mura_root)
    write_lines(images_csv, images_csv.read_text().splitlines()[:-1])
    labels_csv = mura_root / "MURA-v1.1" / "valid_labeled_studies.csv"
    write_lines(labels_csv, [line.replace(",0", ",yes") for line in labels_csv.read_text().splitlines()])
    with pytest.raises(DataLayoutError, match=r"label\(s\) are not 0 or 1"):
        datasets.build_index(mura_root)


def test_wrong_layout_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataLayoutError, match=r"is not a data source this project reads: pass a folder that contains MURA-v1\.1/"):
        datasets.build_index(tmp_path)
    (tmp_path / "MURA-v1.1" / "train").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match=r"MURA-v1\.1 has no valid/ folder"):
        datasets.build_index(tmp_path)
    with pytest.raises(DataLayoutError, match=r"does not exist"):
        datasets.build_index(tmp_path / "absent")


def test_unknown_or_absent_body_part(mura_root: Path) -> None:
    # Any well-formed name is a body part; one the data lack is an error naming the parts present.
    with pytest.raises(DataLayoutError, match=r"no images of knee \(present: elbow, hand, shoulder\)"):
        datasets.build_index(mura_root, parts="elbow,knee")
    with pytest.raises(ParameterError, match="unknown body part 'el bow!'"):
        datasets.build_index(mura_root, parts=["el bow!"])
    with pytest.raises(DataLayoutError, match="no images of wrist"):
        datasets.build_index(mura_root, parts=["wrist"])


def test_parts_filter_keeps_each_patients_split(mura_root: Path) -> None:
    every_part = datasets.build_index(mura_root)
    elbows = datasets.build_index(mura_root, parts=["XR_ELBOW"])
    assert set(elbows["body_part"]) == {"elbow"}
    expected = every_part[every_part["body_part"] == "elbow"].reset_index(drop=True)
    pd.testing.assert_frame_equal(elbows, expected)


def test_index_is_patient_disjoint_and_the_check_catches_a_leak(mura_root: Path) -> None:
    index = datasets.build_index(mura_root)
    datasets.check_patient_disjoint(index)
    assert index.groupby("patient")["split"].nunique().max() == 1
    # Patient 1 has elbow and hand studies; both follow the patient.
    assert index.loc[index["patient"] == "patient00001", "split"].nunique() == 1
    leaked = index.copy()
    row = leaked.index[(leaked["patient"] == "patient00002")][0]
    leaked.loc[row, "split"] = "test" if leaked.loc[row, "split"] != "test" else "train"
    with pytest.raises(DataLayoutError, match=r"1 patient\(s\) appear in more than one split, e\.g\. patient00002"):
        datasets.check_patient_disjoint(leaked)


def test_patient_in_both_mura_splits_is_rejected(tmp_path: Path) -> None:
    root = write_mura(tmp_path, STUDIES + [("valid", "hand", 3, 2, 0, 1)])
    with pytest.raises(DataLayoutError, match=r"1 patient\(s\) have studies in both train/ and valid/, e\.g\. patient00003"):
        datasets.build_index(root)


def many_patients(count: int = 1600, seed: int = 0) -> pd.DataFrame:
    """An index-like table (no files) with ``count`` MURA-train patients of varied parts and labels."""
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(count):
        parts = ["elbow", "hand", "shoulder"] if number % 10 == 0 else [("elbow", "hand", "shoulder")[number % 3]]
        for part in parts:
            label = int(rng.random() < (0.3 if part == "hand" else 0.45))
            rows.extend({"patient": f"patient{number:05d}", "body_part": part, "label": label,
                         "source_split": "train"} for _ in range(int(rng.integers(1, 4))))
    rows.append({"patient": "patient99999", "body_part": "elbow", "label": 1, "source_split": "valid"})
    return pd.DataFrame(rows)


def test_split_is_deterministic_for_a_seed() -> None:
    table = many_patients()
    first = datasets.mura.assign_splits(table, seed=7)
    pd.testing.assert_series_equal(first, datasets.mura.assign_splits(table, seed=7))
    other = datasets.mura.assign_splits(table, seed=8)
    assert (first != other).any()
    val_patients = [set(table.loc[split == "val", "patient"]) for split in (first, other)]
    assert val_patients[0] != val_patients[1]
    with pytest.raises(ParameterError, match="seed must be a non-negative integer"):
        datasets.mura.assign_splits(table, seed=-1)


def test_build_index_split_depends_only_on_the_seed(mura_root: Path) -> None:
    index = datasets.build_index(mura_root, seed=1)
    pd.testing.assert_frame_equal(index, datasets.build_index(mura_root, seed=1))
    # 26 MURA-train patients: some seed among a few moves a different patient set to val.
    val_sets = {frozenset(datasets.build_index(mura_root, seed=seed).query("split == 'val'")["patient"]) for seed in range(1, 5)}
    assert len(val_sets) > 1


def test_split_is_stratified_by_part_and_label() -> None:
    table = many_patients()
    table["split"] = datasets.mura.assign_splits(table, seed=42, val_fraction=0.125)
    assert table.groupby("patient")["split"].nunique().max() == 1
    assert (table.loc[table["source_split"] == "valid", "split"] == "test").all()
    patients = table[table["source_split"] == "train"].drop_duplicates(["patient", "body_part", "label"])
    val_share = patients.groupby(["body_part", "label"])["split"].apply(lambda split: (split == "val").mean())
    # Every (part, label) stratum gets its share of val patients, up to sampling granularity.
    assert val_share.between(0.113, 0.137).all(), val_share
    overall = table.drop_duplicates("patient").query("source_split == 'train'")["split"].eq("val").mean()
    assert abs(overall - 0.125) < 0.005
    with pytest.raises(ParameterError, match="val_fraction"):
        datasets.mura.assign_splits(table, val_fraction=1.5)


def test_summary_and_fingerprint(mura_root: Path) -> None:
    index = datasets.build_index(mura_root)
    summary = datasets.summarize_index(index)
    assert list(summary.columns) == ["split", "body_part", "label", "patients", "studies", "images"]
    assert summary["images"].sum() == len(index)
    assert summary["studies"].sum() == index["study"].nunique()
    assert list(summary["split"].drop_duplicates()) == ["train", "val", "test"]
    test_shoulder = summary.query("split == 'test' and body_part == 'shoulder'").set_index("label")
    assert test_shoulder.loc[1, ["patients", "studies", "images"]].tolist() == [1, 1, 3]
    assert test_shoulder.loc[0, ["patients", "studies", "images"]].tolist() == [1, 1, 2]
    fingerprint = datasets.index_fingerprint(index)
    assert len(fingerprint) == 16
    assert datasets.index_fingerprint(index.sample(frac=1.0, random_state=0)) == fingerprint
    relabelled = index.copy()
    relabelled.loc[0, "label"] = 1 - relabelled.loc[0, "label"]
    assert datasets.index_fingerprint(relabelled) != fingerprint
    moved = index.copy()
    moved.loc[0, "split"] = "val" if moved.loc[0, "split"] == "train" else "train"
    assert datasets.index_fingerprint(moved) != fingerprint


def test_saved_index_reads_back(mura_root: Path, tmp_path: Path) -> None:
    index = datasets.build_index(mura_root)
    path = datasets.save_index(index, tmp_path / "out" / "index.csv")
    pd.testing.assert_frame_equal(datasets.load_index(path), index, check_dtype=False)
    assert not list(path.parent.glob(".*tmp*"))


def test_cli_writes_the_table_and_prints_the_summary(mura_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "index.csv"
    code = cli.main(["index", str(mura_root), "--parts", "elbow,hand", "--seed", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "patients" in printed and "studies" in printed and "images" in printed
    assert "no patient in two splits" in printed
    written = pd.read_csv(out)
    expected = datasets.build_index(mura_root, parts="elbow,hand", seed=3)
    assert list(written.columns) == datasets.INDEX_COLUMNS
    assert written["path"].tolist() == expected["path"].tolist()
    assert written["split"].tolist() == expected["split"].tolist()
    assert f"fingerprint {datasets.index_fingerprint(expected)}" in printed


def test_cli_reports_a_bad_root_in_one_line(tmp_path: Path, capsys) -> None:
    code = cli.main(["index", str(tmp_path), "--out", str(tmp_path / "index.csv")])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: ") and error.count("\n") == 1 and "MURA-v1.1" in error
    assert not (tmp_path / "index.csv").exists()
