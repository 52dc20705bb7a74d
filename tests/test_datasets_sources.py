"""FracAtlas and manifest sources, source detection, the truncated-JPEG policy and fracture boxes."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from source_fixtures import CONTRADICTION, DUPLICATE_OF, MIXED, TRUNCATED, write_fracatlas, write_manifest, write_png

from fracture_lib import cli, datasets, imageio
from fracture_lib.errors import DataLayoutError, ImageReadError


@pytest.fixture(scope="module")
def fracatlas_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fracatlas(tmp_path_factory.mktemp("fracatlas"))


def quietly(function, *args, **kwargs):
    """Call ``function`` with the source's warnings silenced (they are checked separately)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return function(*args, **kwargs)


# --- detection ---------------------------------------------------------------------------------


def test_resolve_source_tells_the_three_layouts(fracatlas_root: Path, tiny_demo_root: Path, tmp_path: Path) -> None:
    assert datasets.resolve_source(fracatlas_root).kind == "fracatlas"
    assert datasets.resolve_source(tiny_demo_root).kind == "mura"
    assert datasets.resolve_source(tiny_demo_root / "MURA-v1.1").root == tiny_demo_root
    assert datasets.resolve_source(tiny_demo_root).synthetic
    manifest = write_manifest(tmp_path, [{"path": "a.png", "label": 1}])
    source = datasets.resolve_source(manifest)
    assert (source.kind, source.root) == ("manifest", tmp_path)
    with pytest.raises(DataLayoutError, match="is a file but not a CSV"):
        datasets.resolve_source(tmp_path / "a.png")
    with pytest.raises(DataLayoutError, match="manifest .* does not exist"):
        datasets.resolve_source(tmp_path / "absent.csv")


# --- FracAtlas ---------------------------------------------------------------------------------


def test_fracatlas_rules(fracatlas_root: Path) -> None:
    with pytest.warns(UserWarning, match="contradicts their folder.*the label follows the folder"):
        indexed = datasets.index_source(fracatlas_root, seed=0)
    index = indexed.index
    assert list(index.columns) == datasets.INDEX_COLUMNS
    by_id = index.set_index(index["path"].str.rsplit("/", n=1).str[-1])
    # Label from the folder, the contradiction reported with the rule applied.
    assert by_id.loc[CONTRADICTION, "label"] == 1
    assert indexed.report.contradictions == [f"images/Fractured/{CONTRADICTION}"]
    # Several parts on one film: its own part 'mixed', counted.
    assert by_id.loc[MIXED, "body_part"] == "mixed" and indexed.report.mixed == 1
    # Byte-identical films are one patient (so one split); every other film is its own patient and study.
    copy, original = DUPLICATE_OF
    assert by_id.loc[copy, "patient"] == by_id.loc[original, "patient"] == "IMG0000015"
    assert by_id.loc[copy, "split"] == by_id.loc[original, "split"]
    assert indexed.report.duplicate_groups == [[f"images/Non_fractured/{original}", f"images/Non_fractured/{copy}"]]
    assert index["study"].is_unique and (index["view"] == 1).all() and (index["source_split"] == "").all()
    assert index["patient"].nunique() == len(index) - 1
    # The truncated film is left out by default, and said so.
    assert TRUNCATED not in by_id.index and indexed.report.truncated == [f"images/Non_fractured/{TRUNCATED}"]
    assert any("truncated JPEG" in note and "left out" in note for note in indexed.report.notes)
    datasets.check_patient_disjoint(index)


def test_fracatlas_split_is_stratified_and_deterministic(fracatlas_root: Path) -> None:
    first = quietly(datasets.build_index, fracatlas_root, seed=3)
    pd.testing.assert_frame_equal(first, quietly(datasets.build_index, fracatlas_root, seed=3))
    assert not first["split"].equals(quietly(datasets.build_index, fracatlas_root, seed=4)["split"])
    shares = first["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.08 and abs(shares["val"] - 0.1) < 0.06 and abs(shares["test"] - 0.2) < 0.06
    for (part, label), rows in first[first["body_part"] != "mixed"].groupby(["body_part", "label"]):
        counts = rows["split"].value_counts()
        assert counts.get("test", 0) == pytest.approx(0.2 * len(rows), abs=1.5), (part, label)
        assert counts.get("val", 0) >= 1, (part, label)


def test_fracatlas_parts_and_truncated_files_kept_on_request(fracatlas_root: Path) -> None:
    legs = quietly(datasets.build_index, fracatlas_root, parts="leg", seed=0)
    assert set(legs["body_part"]) == {"leg"}
    kept = quietly(datasets.index_source, fracatlas_root, parts=["leg"], seed=0, keep_truncated=True)
    assert f"images/Non_fractured/{TRUNCATED}" in set(kept.index["path"]) and kept.report.truncated_kept
    # A patient's split does not depend on the parts asked for or on the truncation policy.
    every = quietly(datasets.build_index, fracatlas_root, seed=0).set_index("path")["split"]
    assert (every[legs["path"]].to_numpy() == legs["split"].to_numpy()).all()
    with pytest.raises(DataLayoutError, match=r"no images of elbow \(present: hand, shoulder|no images of elbow"):
        quietly(datasets.build_index, fracatlas_root, parts="elbow")


def test_fracatlas_boxes_come_from_the_polygons(fracatlas_root: Path) -> None:
    boxes = datasets.load_fracture_boxes(fracatlas_root)
    assert list(boxes.columns) == ["path", *datasets.BOX_COLUMNS]
    assert boxes["path"].str.startswith("images/Fractured/").all() and len(boxes) == 26
    assert (boxes["x_max"] > boxes["x_min"]).all() and (boxes["y_max"] > boxes["y_min"]).all()
    # COCO puts pixel edges at whole numbers; the boxes use pixel centres (half a pixel less).
    first = boxes.iloc[0]
    image = imageio.load_image(fracatlas_root / first["path"])
    assert 0 <= first["x_min"] and first["x_max"] < image.shape[1] and first["y_max"] < image.shape[0]
    assert first["x_min"] % 1 == pytest.approx(0.5)


def test_fracatlas_layout_errors(tmp_path: Path) -> None:
    root = write_fracatlas(tmp_path / "broken")
    (root / "dataset.csv").write_text("image_id,hand\nIMG0000000.jpg,1\n")
    with pytest.raises(DataLayoutError, match="lacks column.*leg"):
        datasets.build_index(root)
    write_fracatlas(tmp_path / "unlisted")
    lines = (tmp_path / "unlisted" / "dataset.csv").read_text().splitlines()
    (tmp_path / "unlisted" / "dataset.csv").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(DataLayoutError, match="does not list 3 film"):
        quietly(datasets.build_index, tmp_path / "unlisted")


def test_index_command_on_fracatlas_prints_the_quirks(fracatlas_root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["index", str(fracatlas_root), "--parts", "hand,leg", "--out", str(tmp_path / "index.csv")]) == 0
    printed = capsys.readouterr().out
    assert "FracAtlas:" in printed and "note: 1 group(s) of byte-identical films" in printed
    assert "truncated JPEG" in printed and "contradicts their folder" in printed
    written = datasets.load_index(tmp_path / "index.csv")
    assert set(written["body_part"]) == {"hand", "leg"}


# --- truncated JPEGs ---------------------------------------------------------------------------


def test_truncated_jpeg_decodes_with_grey_rows_and_a_note(fracatlas_root: Path, tmp_path: Path) -> None:
    path = fracatlas_root / "images" / "Non_fractured" / TRUNCATED
    assert imageio.is_truncated_jpeg(path)
    assert not imageio.is_truncated_jpeg(fracatlas_root / "images" / "Non_fractured" / DUPLICATE_OF[1])
    image = imageio.load_image(path)
    assert image.shape == (96, 80)
    # libjpeg fills the rows it never received with mid-grey.
    assert np.abs(image[-1].astype(int) - 128).max() <= 2
    assert imageio.decode_notes(path) == [imageio.TRUNCATED_NOTE]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"\xff\xd8")
    with pytest.raises(ImageReadError, match="empty.jpg"):
        imageio.load_image(empty)


# --- manifests ---------------------------------------------------------------------------------


def good_rows() -> list[dict[str, object]]:
    rows = []
    for patient in range(24):
        for view in (1, 2):
            rows.append({"path": f"p{patient:02d}/s1/view{view}.png", "label": ("abnormal" if patient % 3 == 0 else 0),
                         "body_part": "Hand" if patient % 2 else "XR_WRIST", "patient": f"p{patient:02d}",
                         "study": f"p{patient:02d}-s1", "split": "test" if patient >= 20 else ""})
    return rows


def test_manifest_reads_every_column(tmp_path: Path) -> None:
    index = datasets.build_index(write_manifest(tmp_path, good_rows()), seed=0)
    assert list(index.columns) == datasets.INDEX_COLUMNS and len(index) == 48
    assert set(index["body_part"]) == {"hand", "wrist"}
    assert index.loc[index["path"] == "p00/s1/view1.png", "label"].item() == 1
    assert set(index.loc[index["patient"] >= "p20", "split"]) == {"test"}
    assert set(index.loc[index["patient"] < "p20", "split"]) == {"train", "val"}
    assert sorted(index.loc[index["study"] == "p03-s1", "view"]) == [1, 2]
    datasets.check_patient_disjoint(index)


def test_manifest_defaults_each_image_its_own_study_and_patient(tmp_path: Path) -> None:
    rows = [{"path": f"img{number}.png", "label": number % 2} for number in range(16)]
    index = datasets.build_index(write_manifest(tmp_path, rows), seed=0)
    assert index["study"].is_unique and (index["patient"] == index["study"]).all()
    assert set(index["body_part"]) == {"unspecified"} and set(index["split"]) == {"train", "val"}


@pytest.mark.parametrize(("rows", "message"), [
    ([{"path": "a.png", "label": "maybe"}], r"line 2: label 'maybe' is not a known label: write 0 or 1"),
    ([{"path": "../outside.png", "label": 1}], r"line 2: path '\.\./outside\.png' escapes the manifest's folder"),
    ([{"path": "/etc/x.png", "label": 1}], r"escapes the manifest's folder"),
    ([{"path": "a.png", "label": 1}, {"path": "a.png", "label": 1}], r"line 3: path 'a\.png' is listed again \(first on line 2\)"),
    ([{"path": "a.png", "label": 1, "study": "s", "patient": "p"}, {"path": "b.png", "label": 0, "study": "s", "patient": "p"}],
     r"study 's' has two labels"),
    ([{"path": "a.png", "label": 1, "study": "s", "patient": "p"}, {"path": "b.png", "label": 1, "study": "s", "patient": "q"}],
     r"study 's' is listed under two patients"),
    ([{"path": "a.png", "label": 1, "split": "valid"}], r"split 'valid' is unknown: write train, val or test"),
    ([{"path": "a.tif", "label": 1}], r"'a\.tif' is not a PNG or JPEG file"),
])
def test_manifest_bad_values_name_the_line_and_the_fix(tmp_path: Path, rows: list[dict], message: str) -> None:
    manifest = write_manifest(tmp_path, rows)
    with pytest.raises(DataLayoutError, match=message) as raised:
        datasets.build_index(manifest)
    assert str(manifest) in str(raised.value) and "\n" not in str(raised.value)


def test_manifest_missing_files_and_columns(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, [{"path": "a.png", "label": 1}, {"path": "gone.png", "label": 0}])
    (tmp_path / "gone.png").unlink()
    with pytest.raises(DataLayoutError, match=r"line 3: image 'gone\.png' does not exist.*--drop-missing"):
        datasets.build_index(manifest)
    with pytest.warns(UserWarning, match="dropped 1 of 2 images"):
        assert len(datasets.build_index(manifest, drop_missing=True)) == 1
    (tmp_path / "bad.csv").write_text("file,diagnosis\na.png,1\n")
    with pytest.raises(DataLayoutError, match="has no 'path' and no 'label' column"):
        datasets.build_index(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataLayoutError, match="empty.csv is empty"):
        datasets.build_index(tmp_path / "empty.csv")


def test_manifest_truncated_jpeg_follows_the_same_policy(tmp_path: Path) -> None:
    write_png(tmp_path / "good.png")
    ok, buffer = __import__("cv2").imencode(".jpg", np.full((40, 40), 90, np.uint8))
    (tmp_path / "cut.jpg").write_bytes(buffer.tobytes()[: len(buffer) // 2])
    manifest = write_manifest(tmp_path, [{"path": "good.png", "label": 0}, {"path": "cut.jpg", "label": 1}], images=False)
    indexed = datasets.index_source(manifest)
    assert list(indexed.index["path"]) == ["good.png"] and indexed.report.truncated == ["cut.jpg"]
    assert set(datasets.build_index(manifest, keep_truncated=True)["path"]) == {"good.png", "cut.jpg"}
