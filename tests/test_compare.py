"""crdoco_jax.compare: one row per pair from the experiment tables."""
import json
import os
import subprocess
import sys

import pytest

from crdoco_jax import compare, experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(value, f_s=None, f_t=None, metric="target_miou"):
  run = dict(result={metric: value}, wall_seconds=60.0, returncode=0)
  if f_s is not None:
    run["diagnostics"] = dict(
        f_t_miou=f_t, f_s_translated_miou=f_s, agreement=90.0,
        per_class=dict(f_t={"a": f_t}, f_s_translated={"a": f_s}))
  return run


def _table(tmp_path, name, runs):
  """Writes the runner's results.json for ``{method: {seed: run}}``."""
  workdir = tmp_path / name
  workdir.mkdir()
  (workdir / experiments.RESULTS_FILE).write_text(
      json.dumps(experiments.summarize(runs)))  # keys become strings
  return str(workdir)


def test_rows_gain_paired_headroom_and_both_tests(tmp_path):
  good = _table(tmp_path, "good", {
      "source_only": {0: _run(10.0), 1: _run(12.0)},
      "crdoco": {0: _run(60.0), 1: _run(58.0), 2: _run(61.0)},
      "no_consistency": {0: _run(55.0, f_s=62.0, f_t=55.0),
                         1: _run(54.0, f_s=60.0, f_t=54.0)},
      "oracle": {0: _run(70.0), 1: _run(72.0)}})
  noisy = _table(tmp_path, "noisy", {
      "source_only": {0: _run(10.0)},
      "crdoco": {0: _run(40.0), 1: _run(50.0)},
      "no_consistency": {0: _run(41.0, f_s=38.0, f_t=41.0),
                         1: _run(46.0, f_s=44.0, f_t=46.0)},
      "oracle": {0: _run(60.0)}})
  rows, text = compare.compare([("a -> b", good), ("c -> d", noisy)])
  g, n = rows["a -> b"], rows["c -> d"]
  assert g["gain"] == pytest.approx((60 + 58 + 61) / 3 - 54.5)
  # Paired over the seeds both finished: seed 2 has no partner.
  assert g["paired"] == {0: pytest.approx(5.0), 1: pytest.approx(4.0)}
  assert g["headroom"] == pytest.approx(61.0 - 54.5)
  assert g["gap_closed"]["crdoco"] == pytest.approx((59.667 - 11) / 60,
                                                    abs=1e-4)
  assert g["gap_test"] and g["gain_test"]
  # Gain +1.5 on the means, below CrDoCo's seed std (7.07).
  assert n["gain"] == pytest.approx(1.5)
  assert n["gap_test"] and not n["gain_test"]
  assert n["headroom"] == pytest.approx(-2.5)
  assert "| a -> b | 11.00 | 59.67 ± 1.53 | 54.50 ± 0.71 | 71.00 |" in text
  assert "+5.00, +4.00 | +6.5 | yes | yes |" in text
  assert "| +1.50 | -1.00, +4.00 | -2.5 | yes | **no** |" in text
  assert f"- c -> d: `{noisy}`" in text


def test_lower_is_better_metric_counts_gains_downwards(tmp_path):
  epe = lambda v: _run(v, metric="target_epe")
  flow = _table(tmp_path, "flow", {
      "source_only": {0: epe(3.0)}, "crdoco": {0: epe(1.5), 1: epe(1.6)},
      "no_consistency": {0: epe(2.0), 1: epe(2.2)},
      "oracle": {0: epe(1.0)}})
  row = compare.compare([("flow", flow)])[0]["flow"]
  assert row["gain"] == pytest.approx(2.1 - 1.55)
  assert row["paired"] == {0: pytest.approx(0.5), 1: pytest.approx(0.6)}
  assert row["headroom"] is None
  assert row["gap_closed"]["crdoco"] == pytest.approx(1.45 / 2.0)


def test_missing_methods_are_shown_not_guessed(tmp_path):
  only = _table(tmp_path, "only", {"crdoco": {0: _run(50.0)},
                                   "no_consistency": {0: _run(48.0)}})
  rows, text = compare.compare([("x", only)])
  assert rows["x"]["gap_test"] is None and rows["x"]["gain_test"] is not None
  assert "| x | n/a | 50.00 ± 0.00 | 48.00 ± 0.00 | n/a | n/a / n/a |" in text


def test_bad_input_names_the_file_or_value(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere/results.json"):
    compare.compare([("x", str(tmp_path / "nowhere"))])
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "results.json").write_text(json.dumps({"target_miou": 3.0}))
  with pytest.raises(ValueError, match="single run"):
    compare.compare([("x", str(run_dir))])
  with pytest.raises(ValueError, match="NAME=WORKDIR"):
    compare.parse_table("/only/a/path")
  assert compare.parse_table("a -> b=/w") == ("a -> b", "/w")
  good = _table(tmp_path, "t", {"crdoco": {0: _run(1.0)}})
  with pytest.raises(ValueError, match="repeat"):
    compare.compare([("x", good), ("x", good)])


def test_command_line_writes_markdown_and_json(tmp_path):
  table = _table(tmp_path, "t", {"crdoco": {0: _run(50.0)},
                                 "no_consistency": {0: _run(45.0)}})
  out = tmp_path / "pairs.md"
  proc = subprocess.run(
      [sys.executable, "-m", "crdoco_jax.compare", f"--table=p=q={table}",
       f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
      timeout=120, stdin=subprocess.DEVNULL)
  assert proc.returncode == 0, proc.stderr
  assert "| p=q | n/a | 50.00 ± 0.00 | 45.00 ± 0.00 |" in proc.stdout
  assert out.read_text() == proc.stdout
  rows = json.loads((tmp_path / "pairs.json").read_text())
  assert rows["p=q"]["gain"] == pytest.approx(5.0)


def test_gap_share_never_rounds_across_the_threshold():
  # 59.9% of the gap fails ">= 60%"; shown as a whole number it would read
  # as a pass beside its "**no**".
  assert compare._pct(0.5992, 0.6) == "59.9%"
  assert compare._pct(0.59999, 0.6) == "59.9%"
  assert compare._pct(0.6, 0.6) == "60%"
  assert compare._pct(0.5949, 0.6) == "59%"
  assert compare._pct(0.823, 0.6) == "82%"
  assert compare._pct(None, 0.6) == "n/a"
