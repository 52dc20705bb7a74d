"""``evaluate``: internal validation of a run, external validation on another source, and the refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fracture_lib import cli, datasets, evaluation, runs
from fracture_lib.errors import DataLayoutError, ParameterError


@pytest.fixture(scope="module")
def external_manifest(tiny_demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo set's elbow films copied elsewhere and listed in a manifest: a source the run never saw."""
    folder = tmp_path_factory.mktemp("external")
    index = datasets.build_index(tiny_demo_root, parts=["elbow"], seed=0)
    lines = ["path,label,body_part,patient"]
    for number, row in enumerate(index.itertuples()):
        target = folder / "films" / f"film{number:03d}.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(tiny_demo_root / row.path, target)
        lines.append(f"films/{target.name},{row.label},elbow,{row.patient}")
    (folder / "external.csv").write_text("\n".join(lines) + "\n")
    return folder / "external.csv"


def test_internal_evaluation_matches_the_run(tiny_runs: dict[str, Path]) -> None:
    result = evaluation.evaluate_run(tiny_runs["elbow"], n_boot=50, seed=0)
    assert not result.external and result.label == "internal" and result.split == "test"
    assert set(result.predictions["path"]) <= set(result.index.loc[result.index["split"] == "test", "path"])
    assert result.result.counts["test"]["image"]["n"] == len(result.predictions) > 0
    document = result.to_dict()
    assert document["validation"] == "internal" and document["source"]["kind"] == "mura"
    assert document["metrics"]["test"]["study"]["auroc"]["ci_low"] is not None
    path = evaluation.save_run_evaluation(result)
    assert path == tiny_runs["elbow"] / "evaluations" / "internal-synthetic-demo-mura-layout-test.json"
    assert json.loads(path.read_text())["threshold"] == result.result.threshold


def test_evaluate_command_prints_and_writes(tiny_runs: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "elbow.json"
    assert cli.main(["evaluate", "--part", "elbow", "--run-name", "tiny", "--n-bootstrap", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "internal validation of" in printed and "kappa" in printed and "auroc" in printed
    assert f"written to {out}" in printed and json.loads(out.read_text())["split"] == "test"
    assert cli.main(["evaluate", "--part", "elbow", "--run-name", "tiny", "--n-bootstrap", "20", "--split", "val",
                     "--json", "--out", str(tmp_path / "val.json")]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["split"] == "val" and document["headline"]["auroc"]["value"] is not None
    # The scored split is named as scored, not "test".
    assert document["headline"]["split"] == "val" and set(document["metrics"]) == set(document["counts"]) == {"val"}


def test_external_validation_keeps_the_runs_threshold(tiny_runs: dict[str, Path], external_manifest: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    internal = evaluation.evaluate_run(tiny_runs["elbow"], n_boot=20, threshold_method="youden")
    external = evaluation.evaluate_run(tiny_runs["elbow"], external_manifest, split="all", external=True,
                                       n_boot=20, threshold_method="youden")
    assert external.external and external.to_dict()["validation"] == "external"
    # The threshold is chosen on the run's own validation split, never on the external data.
    assert external.result.threshold == internal.result.threshold
    assert len(external.predictions) == len(external.index)
    assert cli.main(["evaluate", "--part", "elbow", "--run-name", "tiny", "--data", str(external_manifest),
                     "--external", "--split", "all", "--n-bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("external validation of") and "manifest external.csv" in printed
    written = json.loads((tiny_runs["elbow"] / "evaluations" / "external-manifest-external-csv-all.json").read_text())
    assert written["headline"]["split"] == "all" and set(written["metrics"]) == {"val", "all"}
    assert written["counts"]["all"]["image"]["n"] == len(external.index)


def test_other_data_without_external_is_refused(tiny_runs: dict[str, Path], external_manifest: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(DataLayoutError, match=r"was trained on synthetic demo .* not on .*external\.csv: pass --external"):
        evaluation.evaluate_run(tiny_runs["elbow"], external_manifest)
    assert cli.main(["evaluate", "--part", "elbow", "--run-name", "tiny", "--data", str(external_manifest)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "Traceback" not in error
    with pytest.raises(ParameterError, match="is the data .* was trained on: drop --external"):
        evaluation.evaluate_run(tiny_runs["elbow"], external=True)
    with pytest.raises(ParameterError, match="--split all .* with --external only"):
        evaluation.evaluate_run(tiny_runs["elbow"], split="all")


def test_a_changed_index_is_refused(tiny_runs: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "elbow" / "changed"
    shutil.copytree(tiny_runs["elbow"], copy)
    run_config = json.loads((copy / "config.json").read_text())
    run_config["index_fingerprint"] = "0000000000000000"
    (copy / "config.json").write_text(json.dumps(run_config))
    with pytest.raises(DataLayoutError, match="no longer gives the index .* was trained on"):
        evaluation.evaluate_run(runs.load_run(copy), n_boot=10)
