"""Tests of ``predict`` and ``models``: routing, scoring, JSON schema, bad inputs, Grad-CAM files.

They use the session's tiny runs (elbow fracture model and body-part classifier, run name
``tiny``); hand has no model there, which gives the "no trained model" case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fracture_lib import config, imageio, predict, runs
from fracture_lib.cli import main
from fracture_lib.errors import ImageReadError, ModelNotFoundError, ParameterError

SCHEMA_KEYS = {
    "aggregation",
    "input", "kind", "body_part", "body_part_probability", "body_part_source", "body_part_run_dir",
    "run_dir", "threshold", "threshold_source", "images", "probability", "decision", "unfamiliar", "notes", "error",
}
IMAGE_KEYS = {"path", "probability", "decision", "gradcam"}


@pytest.fixture(scope="module")
def test_index(tiny_demo_root: Path):
    """The tiny demo set's index."""
    from fracture_lib import datasets

    return datasets.build_index(tiny_demo_root)


@pytest.fixture(scope="module")
def held_out_split(test_index) -> str:
    """The held-out split that has elbow images in the tiny set: test, else val."""
    elbow_splits = set(test_index.loc[test_index["body_part"] == "elbow", "split"])
    return "test" if "test" in elbow_splits else "val"


@pytest.fixture(scope="module")
def elbow_rows(test_index, held_out_split: str):
    """The elbow images of the held-out split (never seen in training)."""
    return test_index[(test_index["split"] == held_out_split) & (test_index["body_part"] == "elbow")]


@pytest.fixture(scope="module")
def elbow_image(tiny_demo_root: Path, elbow_rows) -> Path:
    """A held-out elbow image."""
    return tiny_demo_root / elbow_rows["path"].iloc[0]


@pytest.fixture(scope="module")
def elbow_study(tiny_demo_root: Path, elbow_rows) -> Path:
    """The held-out elbow study folder with the most images."""
    return tiny_demo_root / elbow_rows["study"].value_counts().index[0]


@pytest.fixture(scope="module")
def hand_image(tiny_demo_root: Path, test_index) -> Path:
    """A hand image (hand has no fracture model in the tiny runs)."""
    rows = test_index[test_index["body_part"] == "hand"]
    return tiny_demo_root / rows["path"].iloc[0]


@pytest.fixture(scope="module")
def predictor(tiny_runs) -> predict.Predictor:
    """A predictor over the tiny runs, shared by the tests that call the library directly."""
    return predict.Predictor(config.MODELS_DIR, run_name="tiny")


@pytest.fixture(scope="module")
def routed_models_dir(tiny_runs, tmp_path_factory) -> Path:
    """A models folder where every class of the tiny classifier has a fracture model.

    The one-epoch classifier may send an elbow image anywhere; copies of the elbow run stand in
    for the hand and shoulder models, so routing always reaches a model and can be checked.
    """
    models_dir = tmp_path_factory.mktemp("routed") / "models"
    shutil.copytree(tiny_runs["body_part"], models_dir / config.BODY_PART_TARGET / "tiny")
    for part in ("elbow", "hand", "shoulder"):
        shutil.copytree(tiny_runs["elbow"], models_dir / part / "tiny")
    return models_dir


def run_cli(capsys, *arguments: str) -> tuple[int, str, str]:
    """Run ``python -m fracture_lib`` in-process; return (exit code, stdout, stderr)."""
    code = main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def predict_cli(capsys, *arguments: str) -> tuple[int, str, str]:
    """Run ``predict`` on the tiny runs (other tests may add runs beside them in the models folder)."""
    extra = () if "--run-name" in arguments else ("--run-name", "tiny")
    return run_cli(capsys, "predict", *arguments, *extra)


def json_lines(text: str) -> list[dict]:
    """Parse one JSON object per non-empty line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_image_input_is_routed_and_scored(routed_models_dir: Path, capsys, elbow_image: Path) -> None:
    code, out, err = predict_cli(capsys, elbow_image, "--json", "--models", routed_models_dir)
    assert code == 0, err
    [result] = json_lines(out)
    assert result["error"] is None
    assert result["kind"] == "image"
    assert result["body_part_source"] == "classifier"
    assert result["body_part"] in ("elbow", "hand", "shoulder")
    assert 1 / 3 <= result["body_part_probability"] <= 1.0  # the largest of three class probabilities
    assert result["body_part_run_dir"] == str(routed_models_dir / "body_part" / "tiny")
    assert result["run_dir"] == str(routed_models_dir / result["body_part"] / "tiny")
    # No evaluation.json in the tiny run: the default threshold, with a note saying so.
    assert result["threshold"] == 0.5 and result["threshold_source"] == "default"
    assert any("evaluation.json" in note for note in result["notes"])
    [image] = result["images"]
    assert image["path"] == str(elbow_image)
    assert result["probability"] == pytest.approx(image["probability"])
    assert result["decision"] == ("abnormal" if result["probability"] >= 0.5 else "normal")


def test_router_picks_the_part_with_the_highest_mean_probability(routed_models_dir: Path, elbow_study: Path) -> None:
    predictor = predict.Predictor(routed_models_dir)
    result = predictor.score(elbow_study)
    assert result.error is None and result.kind == "study"
    router = predictor.scoring_model(config.BODY_PART_TARGET)
    kind, paths = predict.collect_images(elbow_study)
    probabilities = router.scores(np.stack([router.preprocess(path) for path in paths]))
    expected = router.run.classes[int(np.argmax(probabilities.mean(axis=0)))]
    assert result.body_part == expected
    assert result.body_part_probability == pytest.approx(float(probabilities.mean(axis=0).max()), abs=1e-6)


def test_study_folder_probability_is_the_mean_of_its_images(tiny_runs, capsys, elbow_study: Path) -> None:
    code, out, err = predict_cli(capsys, elbow_study, "--part", "elbow", "--json")
    assert code == 0, err
    [result] = json_lines(out)
    assert result["kind"] == "study"
    expected_paths = sorted(str(path) for path in elbow_study.glob("*.png"))
    assert sorted(image["path"] for image in result["images"]) == expected_paths
    image_probabilities = [image["probability"] for image in result["images"]]
    assert result["probability"] == pytest.approx(float(np.mean(image_probabilities)), abs=1e-7)
    assert result["run_dir"] == str(tiny_runs["elbow"])
    for image in result["images"]:
        assert image["decision"] == ("abnormal" if image["probability"] >= result["threshold"] else "normal")


def test_part_override_skips_the_classifier(tiny_runs, capsys, hand_image: Path) -> None:
    # A hand image scored with the elbow model because the user said so.
    code, out, err = predict_cli(capsys, hand_image, "--part", "ELBOW", "--json")
    assert code == 0, err
    [result] = json_lines(out)
    assert result["body_part"] == "elbow"
    assert result["body_part_source"] == "override"
    assert result["body_part_probability"] is None and result["body_part_run_dir"] is None
    assert result["run_dir"] == str(tiny_runs["elbow"])


def test_json_schema(tiny_runs, capsys, elbow_image: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    code, out, _ = predict_cli(capsys, elbow_image, missing, "--json", "--part", "elbow")
    assert code == 1
    good, bad = json_lines(out)
    for result in (good, bad):
        assert set(result) == SCHEMA_KEYS
        assert isinstance(result["notes"], list)
    assert good["error"] is None and isinstance(good["probability"], float)
    assert good["decision"] in ("abnormal", "normal")
    assert set(good["images"][0]) == IMAGE_KEYS and good["images"][0]["gradcam"] is None
    assert isinstance(good["threshold"], float) and isinstance(good["run_dir"], str)
    assert bad["input"] == str(missing) and bad["kind"] is None and bad["images"] == []
    assert bad["probability"] is None and bad["decision"] is None and isinstance(bad["error"], str)


def test_table_output(tiny_runs, capsys, elbow_study: Path) -> None:
    code, out, err = predict_cli(capsys, elbow_study, "--part", "elbow")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["INPUT", "KIND"]
    assert lines[1].startswith(str(elbow_study)) and " study " in lines[1]
    image_rows = [line for line in lines if line.startswith("  image")]
    assert len(image_rows) == len(list(elbow_study.glob("*.png")))
    assert any(line.startswith("note:") and "threshold 0.5" in line for line in lines)


def make_bad_inputs(folder: Path, good_image: Path) -> dict[str, Path]:
    """Write the bad inputs: missing, truncated PNG, text renamed .png, empty folder."""
    folder.mkdir(parents=True, exist_ok=True)
    truncated = folder / "truncated.png"
    truncated.write_bytes(good_image.read_bytes()[:60])
    text = folder / "notes.png"
    text.write_text("this is not an image\n")
    empty = folder / "empty_study"
    empty.mkdir()
    return {"missing": folder / "does_not_exist.png", "truncated": truncated, "text": text, "empty": empty}


@pytest.mark.parametrize("case", ["missing", "truncated", "text", "empty"])
def test_bad_input_gives_one_line_error_and_exit_1(tiny_runs, capsys, tmp_path: Path, elbow_image: Path,
                                                   case: str) -> None:
    bad_input = make_bad_inputs(tmp_path, elbow_image)[case]
    code, out, err = predict_cli(capsys, bad_input, "--part", "elbow")
    assert code == 1
    error_lines = err.strip().splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith("error: ") and str(bad_input) in error_lines[0]
    assert "Traceback" not in err


def test_one_bad_input_does_not_stop_the_others(tiny_runs, capsys, tmp_path: Path, elbow_image: Path,
                                                elbow_study: Path) -> None:
    bad = make_bad_inputs(tmp_path, elbow_image)
    code, out, err = predict_cli(capsys, elbow_image, bad["text"], elbow_study, bad["empty"], "--json",
                                 "--part", "elbow")
    assert code == 1
    results = json_lines(out)
    assert [result["input"] for result in results] == [str(elbow_image), str(bad["text"]), str(elbow_study),
                                                       str(bad["empty"])]
    assert [result["error"] is None for result in results] == [True, False, True, False]
    assert results[0]["probability"] is not None and results[2]["probability"] is not None
    assert "no images" in results[3]["error"]
    assert len(err.strip().splitlines()) == 2


def test_no_model_for_the_part(tiny_runs, capsys, hand_image: Path) -> None:
    code, out, err = predict_cli(capsys, hand_image, "--part", "hand", "--json")
    assert code == 1
    [result] = json_lines(out)
    assert result["body_part"] == "hand"
    assert "no trained model for 'hand'" in result["error"]
    assert "python -m fracture_lib train --part hand" in result["error"]
    assert str(hand_image) in result["error"]


def test_missing_run_name_lists_the_available_runs(tiny_runs, capsys, elbow_image: Path) -> None:
    code, out, err = predict_cli(capsys, elbow_image, "--part", "elbow", "--run-name", "nope", "--json")
    assert code == 1
    [result] = json_lines(out)
    assert "'nope'" in result["error"] and "tiny" in result["error"]


def test_no_classifier_and_no_part(tiny_runs, capsys, tmp_path: Path, elbow_image: Path) -> None:
    models_dir = tmp_path / "models"
    shutil.copytree(tiny_runs["elbow"], models_dir / "elbow" / "tiny")
    code, out, err = predict_cli(capsys, elbow_image, "--models", models_dir)
    assert code == 1
    assert "no trained body-part classifier" in err and "--part" in err and str(elbow_image) in err
    # With --part the same models folder works.
    code, out, err = predict_cli(capsys, elbow_image, "--models", models_dir, "--part", "elbow")
    assert code == 0, err


def test_usage_errors_exit_2(tiny_runs, capsys, tmp_path: Path, elbow_image: Path) -> None:
    code, _, err = predict_cli(capsys, elbow_image, "--models", tmp_path / "nowhere")
    assert code == 2 and "models folder" in err and "does not exist" in err
    code, _, err = predict_cli(capsys, elbow_image, "--part", "knee")
    assert code == 2 and "unknown body part 'knee'" in err
    with pytest.raises(ParameterError):
        predict.predict_paths([elbow_image], part="knee")
    with pytest.raises(ModelNotFoundError):
        predict.Predictor(tmp_path / "nowhere")


def test_collect_images_orders_naturally_and_skips_other_files(tmp_path: Path) -> None:
    for name in ("image10.png", "image2.PNG", "image1.jpg", ".hidden.png", "readme.txt"):
        (tmp_path / name).write_bytes(b"")
    kind, paths = predict.collect_images(tmp_path)
    assert kind == "study"
    assert [path.name for path in paths] == ["image1.jpg", "image2.PNG", "image10.png"]
    with pytest.raises(ImageReadError, match="sub-folder"):
        nested = tmp_path / "patient"
        (nested / "study1").mkdir(parents=True)
        predict.collect_images(nested)


def test_predict_matches_the_evaluation_path(tiny_runs, tiny_demo_root: Path, test_index, held_out_split: str,
                                             predictor) -> None:
    """The same image scored by ``predict`` and by ``train.predict_split`` (the cache) agrees to ~1e-5."""
    from fracture_lib import train

    run = runs.load_run(tiny_runs["elbow"])
    evaluation = train.predict_split(run, test_index, tiny_demo_root, split=held_out_split)
    for _, row in evaluation.head(3).iterrows():
        result = predictor.score(tiny_demo_root / row["path"], part="elbow")
        assert result.error is None
        assert result.probability == pytest.approx(float(row["probability"]), abs=1e-5)


def test_threshold_comes_from_evaluation_json(tiny_runs, capsys, tmp_path: Path, elbow_study: Path) -> None:
    models_dir = tmp_path / "models"
    run_dir = models_dir / "elbow" / "tiny"
    shutil.copytree(tiny_runs["elbow"], run_dir)
    (run_dir / "evaluation.json").write_text(json.dumps({"threshold": 0.0, "threshold_method": "youden"}))
    code, out, err = predict_cli(capsys, elbow_study, "--models", models_dir, "--part", "elbow", "--json")
    assert code == 0, err
    [result] = json_lines(out)
    assert result["threshold"] == 0.0 and result["threshold_source"] == "evaluation.json"
    assert not any("evaluation.json" in note for note in result["notes"])
    assert result["decision"] == "abnormal"
    assert {image["decision"] for image in result["images"]} == {"abnormal"}
    assert result["aggregation"] == "mean"
    # A threshold chosen on max-aggregated studies is applied to max-aggregated studies.
    (run_dir / "evaluation.json").write_text(json.dumps({"threshold": 0.5, "aggregation": "max"}))
    code, out, err = run_cli(capsys, "predict", elbow_study, "--models", models_dir, "--part", "elbow", "--json")
    [result] = json_lines(out)
    assert result["aggregation"] == "max"
    assert result["probability"] == pytest.approx(max(image["probability"] for image in result["images"]))


def test_gradcam_overlays_are_written(tiny_runs, capsys, tmp_path: Path, elbow_study: Path,
                                      elbow_image: Path) -> None:
    out_dir = tmp_path / "gradcam"
    code, out, err = predict_cli(capsys, elbow_study, elbow_image, "--part", "elbow",
                             "--gradcam", out_dir, "--json")
    assert code == 0, err
    written = [image["gradcam"] for result in json_lines(out) for image in result["images"]]
    image_count = len(list(elbow_study.glob("*.png"))) + 1
    assert len(written) == image_count
    assert len(set(written)) == len(set(image["path"] for result in json_lines(out) for image in result["images"]))
    for result in json_lines(out):
        for image in result["images"]:
            overlay = cv2.imread(image["gradcam"], cv2.IMREAD_UNCHANGED)
            original = cv2.imread(image["path"], cv2.IMREAD_GRAYSCALE)
            # Full resolution: the overlay lies over the original image, not the padded model input.
            assert overlay is not None and overlay.shape == (*original.shape, 3)
            assert Path(image["gradcam"]).parent == out_dir
    assert not list(out_dir.glob(".*"))  # no temporary files left behind


def test_heatmap_is_mapped_back_without_the_padding() -> None:
    # A 100 x 50 image letterboxed into 20 x 20: content in columns 5..14, padding elsewhere.
    heatmap = np.zeros((20, 20), dtype=np.float32)
    heatmap[:, 5:15] = 1.0
    heatmap[:, 5:10] = 0.5  # the left half of the content is cooler
    mapped = predict.heatmap_on_original(heatmap, (100, 50), 20)
    assert mapped.shape == (100, 50)
    assert mapped[:, :20].max() == pytest.approx(0.5) and mapped[:, 30:].min() == pytest.approx(1.0)


def test_gradcam_names_are_unique_for_same_named_images(tmp_path: Path) -> None:
    first = predict.gradcam_filename(tmp_path / "a" / "study1" / "image1.png")
    second = predict.gradcam_filename(tmp_path / "b" / "study1" / "image1.png")
    assert first != second
    assert first.startswith("a_study1_image1_") and first.endswith(".png")


def test_models_lists_the_trained_runs(tiny_runs, capsys) -> None:
    code, out, err = run_cli(capsys, "models", "--json")
    assert code == 0, err
    listed = {(run["name"], run["run"]): run for run in json.loads(out)}
    assert ("elbow", "tiny") in listed and ("body_part", "tiny") in listed
    elbow = listed[("elbow", "tiny")]
    assert set(elbow) == set(runs.RUN_COLUMNS)
    assert elbow["arch"] == "small_cnn" and elbow["img_size"] == 64 and elbow["epochs_trained"] == 1
    assert elbow["threshold"] is None and elbow["created"]
    code, out, err = run_cli(capsys, "models")
    assert code == 0 and "body_part" in out and "small_cnn" in out


def test_models_shows_the_evaluation_headline(tiny_runs, tmp_path: Path) -> None:
    run_dir = tmp_path / "models" / "elbow" / "tiny"
    shutil.copytree(tiny_runs["elbow"], run_dir)
    (run_dir / "evaluation.json").write_text(json.dumps(
        {"threshold": 0.42, "study": {"kappa": 0.61, "auroc": 0.88}}))
    [row] = runs.list_runs(tmp_path / "models").to_dict(orient="records")
    assert row["threshold"] == pytest.approx(0.42)
    assert row["test_study_kappa"] == pytest.approx(0.61) and row["test_study_auroc"] == pytest.approx(0.88)
    assert "0.420" in runs.format_runs_table(runs.list_runs(tmp_path / "models"))


def test_benchmark_latency_reports_percentiles(tiny_runs, elbow_image: Path) -> None:
    from fracture_lib import bench

    numbers = bench.benchmark_latency(runs.load_run(tiny_runs["elbow"]), [elbow_image], repeats=5, batch_size=4)
    assert 0 < numbers["forward_ms_p50"] <= numbers["forward_ms_p95"]
    assert 0 < numbers["single_image_ms_p50"] <= numbers["single_image_ms_p95"]
    assert numbers["batch_images_per_s"] > 0 and numbers["img_size"] == 64


def test_truncated_jpeg_is_scored_with_a_note(tiny_runs, capsys, tmp_path: Path, elbow_image: Path) -> None:
    # The same policy as the cache: the decoder completes the file, and the result says so.
    image = cv2.imread(str(elbow_image), cv2.IMREAD_GRAYSCALE)
    ok, buffer = cv2.imencode(".jpg", image)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buffer.tobytes()[: len(buffer) * 2 // 3])
    assert main(["predict", str(cut), "--part", "elbow", "--run-name", "tiny", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["error"] is None and result["probability"] is not None
    assert any(note.startswith("cut.jpg: truncated JPEG") for note in result["notes"])


def test_models_lists_every_run_when_one_evaluation_is_corrupt(tiny_runs, tmp_path: Path, capsys) -> None:
    for name in ("good", "bad"):
        shutil.copytree(tiny_runs["elbow"], tmp_path / "models" / "elbow" / name)
    (tmp_path / "models" / "elbow" / "good" / "evaluation.json").write_text(json.dumps({"threshold": 0.3}))
    (tmp_path / "models" / "elbow" / "bad" / "evaluation.json").write_text("{not json")
    table = runs.list_runs(tmp_path / "models")
    rows = table.set_index("run")
    assert rows.loc["good", "threshold"] == pytest.approx(0.3) and runs._is_missing(rows.loc["good", "error"])
    assert "evaluation.json" in rows.loc["bad", "error"] and "evaluate" in rows.loc["bad", "error"]
    code, out, err = run_cli(capsys, "models", "--models", str(tmp_path / "models"))
    assert code == 0 and "Traceback" not in out + err
    assert "good" in out and "error: elbow/bad:" in out
    # Scoring with the corrupt run is refused in one line rather than decided at 0.5.
    with pytest.raises(ModelNotFoundError, match=r"cannot read .*bad/evaluation\.json"):
        runs.load_run(tmp_path / "models" / "elbow" / "bad")


def test_tiny_and_blank_images_are_refused_in_one_line(tiny_runs, capsys, tmp_path: Path, elbow_image: Path) -> None:
    tiny, blank, grey_text = tmp_path / "tiny.png", tmp_path / "blank.png", tmp_path / "grey_label.png"
    cv2.imwrite(str(tiny), np.full((1, 1), 128, np.uint8))
    cv2.imwrite(str(blank), np.zeros((300, 300), np.uint8))
    # A flat grey film with a small white label is still blank: the label covers under 1% of it.
    labelled = np.full((300, 300), 90, np.uint8)
    labelled[5:10, 5:40] = 255
    cv2.imwrite(str(grey_text), labelled)
    code, out, err = predict_cli(capsys, tiny, blank, grey_text, elbow_image, "--json")
    assert code == 1 and "Traceback" not in err
    results = {Path(item["input"]).name: item for item in map(json.loads, out.splitlines())}
    assert f"image is 1 x 1 pixels: a radiograph needs at least {imageio.MIN_IMAGE_SIDE} pixels" in results["tiny.png"]["error"]
    assert "image is blank" in results["blank.png"]["error"] and "image is blank" in results["grey_label.png"]["error"]
    assert results[elbow_image.name]["error"] is None and results[elbow_image.name]["probability"] is not None
    assert len(err.strip().splitlines()) == 3 and all(line.startswith("error: ") for line in err.strip().splitlines())


def test_unfamiliar_inputs_are_flagged_and_strict_refuses_them(tiny_runs, capsys, tmp_path: Path,
                                                                elbow_image: Path) -> None:
    from fracture_lib import outliers

    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (400, 300), dtype=np.uint8))
    # A one-epoch 64 px model tells little apart (docs/real-data.md measures trained ones), so the
    # copy's rule is centred on the elbow image's features with a tiny radius: the wiring is tested.
    models = tmp_path / "models"
    run_dir = models / "elbow" / "tiny"
    shutil.copytree(tiny_runs["elbow"], run_dir)
    scorer = predict.ScoringModel(runs.load_run(run_dir))
    _, features = scorer.scores_and_features(scorer.preprocess(elbow_image)[np.newaxis])
    outliers.save_rule(outliers.OutlierRule(mean=features[0].astype(float), precision=np.eye(features.shape[1]),
                                            distance_threshold=1e-3, probability_threshold=None, n_train=1, n_val=1),
                       run_dir)
    code, out, err = predict_cli(capsys, noise, elbow_image, "--part", "elbow", "--json", "--models", models)
    assert code == 0, err
    results = {Path(item["input"]).name: item for item in map(json.loads, out.splitlines())}
    flagged = results["noise.png"]
    # Still scored, but flagged, with the reason in the notes.
    assert flagged["unfamiliar"] is True and flagged["probability"] is not None
    assert any(note.startswith(predict.UNFAMILIAR_NOTE) and "noise.png" in note for note in flagged["notes"])
    assert results[elbow_image.name]["unfamiliar"] is False
    code, out, err = predict_cli(capsys, noise, elbow_image, "--part", "elbow", "--models", models)
    assert "unfamiliar" in out.splitlines()[1] and " ok" in out.splitlines()[2]
    code, out, err = predict_cli(capsys, noise, elbow_image, "--part", "elbow", "--strict", "--models", models)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {noise}: {predict.UNFAMILIAR_NOTE}") and "(--strict)" in err


def test_a_run_without_outlier_rule_is_scored_with_a_note(tiny_runs, capsys, tmp_path: Path, elbow_image: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_runs["elbow"], models / "elbow" / "tiny")
    (models / "elbow" / "tiny" / "outliers.npz").unlink()
    code, out, err = predict_cli(capsys, elbow_image, "--part", "elbow", "--json", "--models", str(models))
    assert code == 0, err
    [result] = map(json.loads, out.splitlines())
    assert result["unfamiliar"] is None and any(note.startswith(predict.NO_RULE_NOTE) for note in result["notes"])
    code, out, err = predict_cli(capsys, elbow_image, "--part", "elbow", "--strict", "--models", str(models))
    assert code == 1 and "has no outliers.npz" in err and "(--strict)" in err
    # A damaged rule file is refused in one line, not skipped.
    (models / "elbow" / "tiny" / "outliers.npz").write_bytes(b"garbage")
    code, out, err = predict_cli(capsys, elbow_image, "--part", "elbow", "--models", str(models))
    assert code == 1 and "cannot read" in err and "outliers.npz" in err and "Traceback" not in err


def test_an_input_flagged_by_the_classifier_keeps_the_flag_when_its_part_has_no_model(
        tiny_runs, tmp_path: Path, hand_image: Path) -> None:
    from fracture_lib import outliers

    # The copied classifier's rule is centred far from every film: whatever it routes is flagged.
    models = tmp_path / "models"
    router_dir = models / config.BODY_PART_TARGET / "tiny"
    shutil.copytree(tiny_runs[config.BODY_PART_TARGET], router_dir)
    rule = outliers.load_rule(router_dir)
    outliers.save_rule(outliers.OutlierRule(mean=rule.mean + 1e6, precision=rule.precision, distance_threshold=1.0,
                                            probability_threshold=None, n_train=1, n_val=1), router_dir)
    result = predict.Predictor(models, run_name="tiny").score(hand_image)
    # No fracture model exists in this folder, so the input fails, but the flag and its reason stay.
    assert result.error is not None and "no trained model" in result.error
    assert result.unfamiliar is True
    assert any(note.startswith(predict.UNFAMILIAR_NOTE) and "body-part classifier" in note for note in result.notes)
