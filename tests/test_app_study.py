"""Issue 19, item 2: the Overview shows the study's verdict with its interval (the gap to two_stream
against length with seed intervals, validation curves, head labels along training), read from
the study's committed files; the loaders and the verdict sentence on their own."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.app_support import STUDY_SAMPLE, bundled_gap_text, figure, make_results, texts
from tests.test_app import open_page
from workbench import app_data

# ---- loaders ---------------------------------------------------------------------------------------------------


def test_study_loaders_read_the_rehearsal_files():
    study = json.loads((STUDY_SAMPLE / "study.json").read_text())
    runs = app_data.study_runs(STUDY_SAMPLE)
    assert len(runs) == len(study["runs"]) == 8 and set(runs["length"]) == {16, 32} and set(runs["seed"]) == {0, 1}
    row = runs[(runs["variant"] == "two_stream") & (runs["length"] == 16) & (runs["seed"] == 0)].iloc[0]
    assert row["any_order"] == pytest.approx(study["runs"][0]["any_order_bits"])

    seeds = app_data.study_seed_gaps(STUDY_SAMPLE)
    assert len(seeds) == 4 and set(seeds["baseline"]) == {"two_stream"}
    gaps = app_data.study_gaps(STUDY_SAMPLE).set_index("length")
    for length in (16, 32):  # the gap over seeds is the mean of the seeds' paired gaps
        assert gaps.loc[length, "gap"] == pytest.approx(seeds[seeds["length"] == length]["gap"].mean())
        assert gaps.loc[length, "n_seeds"] == 2
        assert gaps.loc[length, "ci"] == pytest.approx((gaps.loc[length, "ci_high"] - gaps.loc[length, "ci_low"]) / 2)

    [effect] = app_data.study_length_effect(STUDY_SAMPLE).to_dict("records")
    assert (effect["variant"], effect["from"], effect["to"], effect["n_seeds"]) == ("decoupled_rope", 16, 32, 2)
    assert effect["change"] == pytest.approx(gaps.loc[32, "gap"] - gaps.loc[16, "gap"])
    assert effect["per_seed"] == "0: -0.052, 1: -0.038"

    curves = app_data.study_curves(STUDY_SAMPLE)
    assert set(curves["kind"]) == {"run", "sweep"}
    assert (curves.groupby("run")["best"].sum() == 1).all()  # one best/ evaluation per run
    assert (curves.groupby("run")["tokens"].diff().dropna() > 0).all()

    emergence = app_data.study_emergence(STUDY_SAMPLE)
    raw = json.loads((STUDY_SAMPLE / "study-emergence.json").read_text())
    assert set(emergence["run"]) == set(raw)
    first = raw["two_stream-16-s0"][0]
    got = emergence[(emergence["run"] == "two_stream-16-s0") & (emergence["model"] == first["model"]) & (emergence["stream"] == first["stream"])]
    assert dict(zip(got["label"], got["count"])) == {k: first[k] for k in ("semantic", "structural", "sink", "diffuse")}
    assert set(emergence["seed"]) == {0, 1} and set(emergence["stream"]) == {"content", "query", "main"}


def test_study_loaders_say_what_is_missing_or_malformed(tmp_path):
    for loader in (app_data.study_runs, app_data.study_gaps, app_data.study_curves, app_data.study_emergence):
        with pytest.raises(app_data.AppInputError, match=r"no study results at .*study.*\.json.*docs/study\.md"):
            loader(tmp_path)
    (tmp_path / "study.json").write_text(json.dumps({"runs": [{"variant": "two_stream"}]}))
    with pytest.raises(app_data.AppInputError, match="study.json is not in the format of the study's scripts"):
        app_data.study_runs(tmp_path)
    (tmp_path / "study-emergence.json").write_text("{ not json")
    with pytest.raises(app_data.AppInputError, match="not valid JSON"):
        app_data.study_emergence(tmp_path)


# ---- the verdict -------------------------------------------------------------------------------------------------


def effect(change: float, half: float, n_seeds: int = 3) -> dict:
    return {"variant": "decoupled_rope", "baseline": "two_stream", "from": 128, "to": 1024, "change": change,
            "ci_low": change - half, "ci_high": change + half, "ci": half, "n_seeds": n_seeds}


def test_verdict_when_the_interval_includes_zero():
    sentence = app_data.study_verdict(effect(0.012, 0.020))
    assert sentence.startswith("decoupled_rope − two_stream changes by +0.012 ± 0.020 bits/token from 128 to 1024 (3 seeds")
    assert "the interval includes 0 — no length effect detected at this resolution" in sentence
    assert "(compatible with changes from -0.008 to +0.032; larger ones either way are ruled out)" in sentence
    assert "it can tell a 0.03 bits/token change from zero (half-width 0.020 < 0.03)" in sentence
    wide = app_data.study_verdict(effect(0.012, 0.085))
    assert "includes 0" in wide and "too wide to tell a 0.03 bits/token change from zero (half-width 0.085 ≥ 0.03)" in wide


def test_verdict_when_the_interval_excludes_zero():
    grows = app_data.study_verdict(effect(0.08, 0.02))
    assert "+0.080 ± 0.020" in grows and "the interval excludes 0 — the gap grows with length" in grows and "can tell" in grows
    shrinks = app_data.study_verdict(effect(-0.08, 0.05))
    assert "the interval excludes 0 — the gap shrinks with length" in shrinks and "too wide" in shrinks


def test_verdict_with_one_seed_says_there_is_no_interval():
    for one in (effect(0.05, math.nan, n_seeds=1), {**effect(0.05, 0.0, n_seeds=1), "ci_low": math.nan, "ci_high": math.nan, "ci": math.nan}):
        sentence = app_data.study_verdict(one)
        assert "+0.050 bits/token from 128 to 1024 (1 seed)" in sentence and "no interval over seeds" in sentence
        assert "±" not in sentence and "excludes" not in sentence and "includes" not in sentence


def test_one_seed_study_reads_as_no_interval(tmp_path):
    """scripts/study.py writes a one-seed interval as NaN; a null reads the same."""
    study = json.loads((STUDY_SAMPLE / "study.json").read_text())
    study["length_effect"][0].update(per_seed={"0": -0.05}, ci_low=None, ci_high=None)
    (tmp_path / "study.json").write_text(json.dumps(study))
    [row] = app_data.study_length_effect(tmp_path).to_dict("records")
    assert math.isnan(row["ci"]) and "no interval over seeds" in app_data.study_verdict(row)


# ---- the Overview ------------------------------------------------------------------------------------------------


@pytest.fixture
def study_env(monkeypatch, tmp_path):
    monkeypatch.setenv(app_data.RESULTS_ENV, str(make_results(tmp_path / "results", checkpoints=(), study=True)))
    monkeypatch.delenv(app_data.CHECKPOINTS_ENV, raising=False)
    return tmp_path / "results"


def test_overview_shows_the_study_verdict_gap_curves_and_emergence(study_env):
    at = open_page()
    shown = texts(at)
    [row] = app_data.study_length_effect(study_env).to_dict("records")
    assert app_data.study_verdict(row) in shown
    assert "decoupled_rope − two_stream changes by -0.045 ± 0.085 bits/token from 16 to 32 (2 seeds" in shown

    gap = figure(at, "Gap to two_stream against length")
    gaps, seeds = app_data.study_gaps(study_env), app_data.study_seed_gaps(study_env)
    means = next(t for t in gap["data"] if t["name"] == "decoupled_rope, mean over seeds")
    assert means["y"] == pytest.approx(gaps.sort_values("length")["gap"].tolist())
    assert means["error_y"]["array"] == pytest.approx((gaps["ci_high"] - gaps["gap"]).tolist())
    each = next(t for t in gap["data"] if t["name"] == "decoupled_rope, each seed")
    assert sorted(each["y"]) == pytest.approx(sorted(seeds["gap"]))

    curves = figure(at, "Validation curves")
    lines = [t for t in curves["data"] if t["mode"] == "lines"]
    assert len(lines) == 12 and {t["name"] for t in lines} == {"two_stream", "decoupled_rope"}  # 12 runs, the sweep apart
    assert sum(len(t["x"]) for t in curves["data"] if t["mode"] == "markers") == 12  # one best/ star per run
    sweep = figure(at, "Size sweep")
    assert [t["name"] for t in sweep["data"] if t["mode"] == "lines"] == ["two_stream"]

    emergence = figure(at, "Heads labelled semantic / structural")
    lines = [t for t in emergence["data"] if t["mode"] == "lines+markers"]
    assert {t["name"] for t in lines} == {"two_stream · content", "two_stream · query", "decoupled_rope · main"}
    assert len(lines) == 2 * 6  # (semantic, structural) x seed-0 (run, stream) pairs: 2 lengths x 3 streams
    raw = json.loads((study_env / "study-emergence.json").read_text())
    query = [r for r in raw["two_stream-32-s0"] if r["stream"] == "query"]
    line = next(t for t in lines if t["name"] == "two_stream · query" and t["xaxis"] == "x4")  # structural, length 32
    assert line["y"] == [r["structural"] for r in query if r["model"] != "best"]
    [best] = [t for t in emergence["data"] if t["mode"] == "markers" and t["xaxis"] == "x4" and "two_stream-32-s0, query" in t["hovertemplate"]]
    assert best["x"] == [r["tokens"] for r in query if r["model"] == "best"]
    assert "Seed 0 of each variant and length" in shown

    assert "The bundled checkpoints' own held-out evaluation" in shown and "This is not the study" in shown
    figure(at, "Bits per token on the held-out text, bundled checkpoints")


def test_overview_without_the_study_says_so_and_keeps_the_bundled_evaluation(study_env):
    (study_env / "study.json").unlink()
    at = open_page()
    shown = texts(at)
    assert "no study results at" in shown and "study.json" in shown and "docs/study.md" in shown
    assert "the claim above is untested here" in shown
    assert not [f for f in at.get("plotly_chart") if "Gap to two_stream" in f.proto.spec]
    assert bundled_gap_text(study_env) in shown


def test_overview_with_one_length_says_the_verdict_waits(study_env):
    study = json.loads((study_env / "study.json").read_text())
    study["runs"] = [r for r in study["runs"] if r["seq_len"] == 16]
    study["gaps"] = [g for g in study["gaps"] if g["seq_len"] == 16]
    study["gaps_over_seeds"] = [g for g in study["gaps_over_seeds"] if g["seq_len"] == 16]
    study["length_effect"] = []
    (study_env / "study.json").write_text(json.dumps(study))
    at = open_page()
    shown = texts(at)
    assert "The study has reported length 16 only" in shown and "no verdict yet" in shown
    assert "Verdict on the length effect" not in shown
    gap = figure(at, "Gap to two_stream against length")
    means = next(t for t in gap["data"] if t["name"] == "decoupled_rope, mean over seeds")
    assert means["y"] == pytest.approx(app_data.study_gaps(study_env)["gap"].tolist()) and len(means["y"]) == 1


def test_overview_with_the_study_but_no_curves_or_emergence(study_env):
    for name in ("study-curves.json", "study-emergence.json"):
        (study_env / name).unlink()
    at = open_page()
    shown = texts(at)
    assert "Verdict on the length effect" in shown
    assert "no study results at" in shown and "study-curves.json" in shown and "study-emergence.json" in shown
    figure(at, "Gap to two_stream against length")


def test_a_results_directory_with_only_the_study_is_accepted(tmp_path):
    for path in STUDY_SAMPLE.glob("study*.json"):
        shutil.copy(path, tmp_path / path.name)
    assert app_data.source_dir("results", str(tmp_path)) == tmp_path


def test_runs_that_never_left_their_plateau_are_flagged_beside_the_verdict(study_env):
    curves = app_data.study_curves(study_env)
    assert app_data.study_stalled(curves).empty  # the rehearsal runs all learned
    raw = json.loads((study_env / "study-curves.json").read_text())
    run = raw["runs"]["decoupled_rope-32-s1"]
    first = run["evals"][0]["any_order_bits"]
    for i, e in enumerate(run["evals"]):  # almost flat: a drop of 0.1% of its first value
        e["any_order_bits"] = first * (1 - 0.001 * i / len(run["evals"]))
    (study_env / "study-curves.json").write_text(json.dumps(raw))
    stalled = app_data.study_stalled(app_data.study_curves(study_env))
    assert stalled[["variant", "length", "seed"]].values.tolist() == [["decoupled_rope", 32, 1]]
    assert stalled["drop"].iloc[0] < app_data.PLATEAU * stalled["baseline_drop"].iloc[0]
    note = app_data.stalled_note("decoupled_rope", stalled, app_data.study_runs(study_env))
    assert note.startswith("decoupled_rope: 1 of 2 at 32 did not leave the initial plateau")
    assert app_data.stalled_note("two_stream", stalled, app_data.study_runs(study_env)) is None
    at = open_page()
    assert any(note == w.value for w in at.warning)


def test_gap_figure_gives_each_variant_its_own_panel_and_y_range():
    import pandas as pd

    from workbench import viz

    seeds = pd.DataFrame({"variant": ["a"] * 2 + ["b"] * 2, "baseline": "two_stream", "length": [128, 1024] * 2, "seed": 0,
                          "gap": [0.1, 0.05, 2.0, 3.0], "ci": 0.01})
    gaps = pd.DataFrame({"variant": ["a", "a", "b", "b"], "length": [128, 1024] * 2, "gap": [0.1, 0.05, 2.0, 3.0],
                         "ci_low": [0.0, -0.1, 1.0, 2.0], "ci_high": [0.2, 0.2, 3.0, 4.0], "ci": [0.1, 0.15, 1.0, 1.0], "n_seeds": 3})
    fig = viz.gap_figure(seeds, gaps).to_dict()
    axes = {t["name"]: t.get("yaxis", "y") for t in fig["data"]}
    assert axes == {"a, each seed": "y", "a, mean over seeds": "y", "b, each seed": "y2", "b, mean over seeds": "y2"}
    assert [a["text"] for a in fig["layout"]["annotations"]][:2] == ["a − two_stream", "b − two_stream"]
