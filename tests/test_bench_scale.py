"""The MURA-scale benchmark: subset trees of whole patients, and every step in its own process."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fracture_lib import config, datasets, synthetic
from fracture_lib.bench import scale


def test_a_subset_tree_keeps_whole_patients_and_matching_csvs(tiny_demo_root: Path, tmp_path: Path) -> None:
    subset = scale.subset_tree(tiny_demo_root, 60, tmp_path / "subset", seed=1)
    full, part = datasets.build_index(tiny_demo_root, seed=0), datasets.build_index(subset, seed=0)
    assert 40 <= len(part) <= 60 < len(full)
    assert set(part["path"]) <= set(full["path"])
    # Every film of a kept patient is kept, with its study's label.
    patient_of = lambda frame: frame["path"].str.rsplit("/", n=2).str[0]  # noqa: E731
    kept = set(patient_of(part))
    assert sorted(full.loc[patient_of(full).isin(kept), "path"]) == sorted(part["path"])
    labels = full.set_index("path")["label"]
    assert (part.set_index("path")["label"] == labels.loc[part["path"]]).all()
    assert (subset / part["path"].iloc[0]).is_file() and synthetic.is_synthetic(subset)
    studies = pd.read_csv(subset / config.MURA_DIRNAME / "train_labeled_studies.csv", header=None)
    assert set(studies[0].str.rstrip("/")) == set(part.loc[part["path"].str.contains("/train/"), "study"].str.rstrip("/"))


@pytest.mark.slow
def test_the_scale_benchmark_measures_every_step_in_its_own_process(tiny_demo_root: Path, tmp_path: Path) -> None:
    results = scale.scale_benchmark(tiny_demo_root, sizes=(None,), cache_sizes=(32,), train_img_size=32,
                                    work_dir=tmp_path / "work", progress=False)
    assert results["tree_images"] == len(datasets.build_index(tiny_demo_root, seed=0))
    assert results["baseline"]["peak_rss_bytes"] > 0
    (whole,) = results["rows"]
    assert whole["images"] == results["tree_images"]
    for row in (whole,):
        cache_row = row["cache_32"]
        assert cache_row["images"] == row["images"] and cache_row["cache_bytes"] >= row["images"] * 32 * 32
        assert cache_row["pass_images"] == cache_row["train_images"] == row["index"]["splits"]["train"]
        assert row["train"]["epoch_seconds"] > 0
        for step in ("index", "cache_32", "train", "evaluate"):
            assert row[step]["peak_rss_bytes"] > 0
    assert whole["evaluate"]["test_images"] == ((whole_index := datasets.build_index(tiny_demo_root, seed=0))["split"]
                                                 .eq("test") & whole_index["body_part"].eq("elbow")).sum()
    # A tree without elbow studies in its test split: the evaluation says so instead of failing.
    small = scale.subset_tree(tiny_demo_root, 80, tmp_path / "small", seed=0)
    assert not (datasets.build_index(small, seed=0).query("split == 'test' and body_part == 'elbow'")).size
    # (The steps are called in this process here: the same functions, without another TensorFlow start-up.)
    arguments = {"root": str(small), "img_size": 32, "models_dir": str(tmp_path / "models-small")}
    scale.STEPS["train"](arguments)
    skipped = scale.STEPS["evaluate"](arguments)
    assert "the test split has no images of elbow" in skipped["skipped"]
    # The caches and models of each size are removed once it is measured.
    assert not list((tmp_path / "work").glob("cache-*")) and not list((tmp_path / "work").glob("models-*"))
