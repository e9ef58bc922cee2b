"""Issue 19, items 2 and 8: the Overview states the claim as a hypothesis and says what the bundled
checkpoints' evaluation shows (the study's verdict: tests/test_app_study.py); and the small items
(hints that point to what exists, out of range numbers, one-token text, readable causal columns
with the paired excess, the divergence note, the checkpoints listing, run_app.sh's file watcher)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.app_support import REPO, figure, make_results, texts
from tests.test_app import env, open_page, results  # noqa: F401 (env and results are fixtures)
from workbench import app_data


# ---- item 2: the Overview -------------------------------------------------------------------------------------


def test_overview_states_the_claim_as_a_hypothesis_and_shows_gaps_with_intervals(env, results):
    at = open_page()
    shown = texts(at)
    assert "The hypothesis under test" in shown and "not a finding" in shown
    assert "no study results at" in shown and "docs/study.md" in shown
    nll = json.loads((results / "nll.json").read_text())
    gap = lambda v, n: nll[f"{v}-{n}"]["any_order_bits"]["mean"] - nll[f"two_stream-{n}"]["any_order_bits"]["mean"]  # noqa: E731
    change = gap("decoupled_rope", 1024) - gap("decoupled_rope", 128)
    assert f"decoupled_rope: **{change:+.3f} ± " in shown and "from 128 to 1024" in shown
    assert "one seed" in shown


def test_gap_change_combines_the_two_intervals():
    import pandas as pd

    gaps = pd.DataFrame({"length": [128, 1024], "variant": ["x", "x"], "gap": [0.1, 0.4], "ci": [0.03, 0.04]})
    [row] = app_data.gap_change(gaps).to_dict("records")
    assert row["change"] == pytest.approx(0.3) and row["ci"] == pytest.approx(0.05) and (row["from"], row["to"]) == (128, 1024)


# ---- item 8: small items ---------------------------------------------------------------------------------------


def test_causal_page_without_results_points_to_what_is_there(monkeypatch, tmp_path):
    monkeypatch.setenv(app_data.RESULTS_ENV, str(make_results(tmp_path / "results", checkpoints=())))
    at = open_page("causal")
    shown = texts(at)
    assert "no probe results for two_stream-128" in shown and "Run your own" in shown
    assert "compute a quick estimate here" not in shown and not [b for b in at.button if "quick estimate" in b.label]


def test_out_of_range_numbers_say_so_and_the_nearest_value_is_used(env):
    at = open_page("samples")
    at.number_input(key="p_sample_r").set_value(500).run()
    assert any("r (semantic): 500 is outside 1–127; using 127" in w.value for w in at.warning)
    assert at.number_input(key="p_sample_r").value == 500  # what was typed is kept
    assert "r=127" in next(c.value for c in at.code if "attention_row" in c.value)  # the value used
    at.switch_page("app_pages/divergence.py").run()
    at.number_input(key="p_div_ex_k").set_value(0).run()
    assert any("k: 0 is outside 1–64; using 1" in w.value for w in at.warning)


def test_one_character_text_draws_its_nll(env):
    at = open_page("samples")
    at.radio(key="p_sample_source").set_value("your text").run()
    at.text_area(key="p_sample_text").input("a").run()
    nll = figure(at, "NLL along this order")
    assert len(nll["data"][0]["y"]) == 1 and "markers" in nll["data"][0]["mode"]


def test_knockout_tables_have_readable_columns(env):
    at = open_page("causal")
    columns = list(at.dataframe[0].value.columns)
    assert "ΔNLL (bits/token)" in columns and "excess over random (paired)" in columns
    assert not {"dnll", "random_ci", "excess_ci"} & set(columns)


def test_live_knockout_reports_the_paired_excess_over_random_keys():
    loaded = app_data.LoadedModel(app_data.load_model("two_stream-128"))
    run = app_data.run_causal(loaded, [app_data.HeadRef(1, "query", 2)],
                              ["knock out semantic set S_r", "knock out random keys (as many as S_r)", "zero ablation"], n_sequences=3)
    eff = run.effects.set_index("intervention")
    excess = eff.loc["knock out semantic set S_r", "excess"]
    # paired per sequence, the mean of the differences is the difference of the means
    assert excess == pytest.approx(eff.loc["knock out semantic set S_r", "dnll"] - eff.loc["knock out random keys (as many as S_r)", "dnll"])
    assert math.isfinite(eff.loc["knock out semantic set S_r", "excess_ci"])
    assert np.isnan(eff.loc["zero ablation", "excess"])


def test_divergence_page_says_why_the_length_leaves_one_step_unchanged(env):
    at = open_page("divergence")
    assert "Why the length T does not change the overlap at a fixed step" in texts(at)


def test_checkpoints_listing_labels_its_training_time_subset(capsys):
    from workbench.cli import main

    assert main(["checkpoints"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("two_stream-128 "))
    metrics = json.loads((REPO / "checkpoints" / "two_stream-128" / "checkpoint.json").read_text())["metrics"]
    assert f"{metrics['val_any_order_bits']:.3f} (first {metrics['val_windows']} val windows x 2 orders)" in line
    assert "training-time subset" in out and "results/nll.json" in out


def test_run_app_does_not_watch_the_repository():
    script = (REPO / "scripts" / "run_app.sh").read_text()
    assert "--server.fileWatcherType none" in script.split("exec", 1)[1]


def test_paths_inside_the_project_are_shown_relative_to_it(monkeypatch):
    monkeypatch.delenv(app_data.RESULTS_ENV, raising=False)
    monkeypatch.delenv(app_data.CHECKPOINTS_ENV, raising=False)
    assert app_data.shown_path(REPO / "results" / "probes") == "results/probes"
    assert app_data.shown_path("/elsewhere/results") == "/elsewhere/results"
    at = open_page(p_source_results=str(REPO / "results"))
    assert [t.placeholder for t in at.text_input] == ["checkpoints", "results"]
    shown = texts(at)
    assert "Using results" in shown and "results/nll.json" in shown and "`results/probes/two_stream-128/probes.parquet`" in shown
    at.switch_page("app_pages/heads.py").run()
    assert "results/probes/two_stream-128" in texts(at)
    assert str(REPO) not in texts(at)
