"""bench/lso_levers.py: the lever summary reads train_eval JSON and pairs levers with the base by seed."""

from __future__ import annotations

import json

import pytest

from bench.lso_levers import main, paired, runs, summarise


def write(path, rows):
    path.write_text(json.dumps({"results": rows}))


def row(seed, lso, internal=0.9):
    return {"seed": seed, "lso_covid_auc": lso, "lso_macro_f1": 0.3, "covid_auc": internal, "macro_f1": 0.7,
            "train_min": 5.0}  # fmt: skip


def test_summary_and_paired_difference(tmp_path):
    write(tmp_path / "base-s0.json", [row(0, 0.80)])
    write(tmp_path / "base-s1.json", [row(1, 0.70), {"seed": 2, "skipped": "time budget spent"}])
    write(tmp_path / "base2-s0.json", [row(0, 0.90)])
    write(tmp_path / "lever-s0.json", [row(0, 0.88)])
    write(tmp_path / "lever-s1.json", [row(1, 0.74)])
    base = runs(str(tmp_path / "base*-s*.json"))
    lever = runs(str(tmp_path / "lever-s*.json"))
    assert len(base) == 3  # the skipped row is not a run
    summary = summarise(base)
    assert summary["lso_covid_auc"]["mean"] == pytest.approx(0.8) and summary["seeds"] == [0, 1]
    versus = paired(lever, base)
    # seed 0: 0.88 - mean(0.80, 0.90) = +0.03; seed 1: 0.74 - 0.70 = +0.04
    assert versus["seeds"] == [0, 1] and versus["mean"] == pytest.approx(0.035)
    out = tmp_path / "levers.json"
    assert main([f"base={tmp_path}/base*-s*.json", f"lever={tmp_path}/lever-s*.json", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["levers"]["lever"]["vs_base"]["mean"] == pytest.approx(0.035)
    with pytest.raises(SystemExit):
        main([f"none={tmp_path}/nothing-*.json"])
