r"""One table across experiment tables: does the consistency loss help on each
domain pair, and by the evidence issue's two tests?

  python -m crdoco_jax.compare --out=/tmp/pairs.md \
      --table="flat -> textured=/tmp/demo" --table="flat -> fog=/tmp/fog"

Each ``--table=NAME=WORKDIR`` names a workdir of ``crdoco_jax.experiments``
(its ``results.json``). Per pair: source-only, CrDoCo, without the
consistency loss and the oracle (mean ± std over seeds), the share of the
source-only -> oracle gap each adapted method closes, CrDoCo's gain over the
objective without the loss (on the means, and paired by seed: both runs of a
seed share the translators' pretraining and the batches), the headroom
F_S(G_T->S(I_T)) - F_T(I_T) of the run without the loss (segmentation), and
the two tests: CrDoCo closes at least ``--min_gap`` of the gap, and its gain
on the means exceeds the larger of the two methods' seed std.
"""
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app, flags

from crdoco_jax import experiments

_TABLES = flags.DEFINE_multi_string(
    "table", [], "NAME=WORKDIR of an experiments table (repeatable).")
_OUT = flags.DEFINE_string("out", None, "Write the markdown here (and the "
                           "numbers to the same path with .json).")
_MIN_GAP = flags.DEFINE_float("min_gap", 0.6, "Share of the source-only -> "
                              "oracle gap CrDoCo must close.")

ADAPTED, WITHOUT = "crdoco", "no_consistency"


def parse_table(arg: str) -> Tuple[str, str]:
  """``'NAME=WORKDIR'`` -> (name, workdir); the name may hold spaces and
  '->', the workdir is after the last '='."""
  name, sep, workdir = arg.rpartition("=")
  if not sep or not name or not workdir:
    raise ValueError(f"--table={arg!r}: expected NAME=WORKDIR, e.g. "
                     "'flat -> fog=/tmp/fog'.")
  return name, workdir


def load_results(workdir: str) -> Dict[str, Any]:
  """A table's ``results.json``, with a clear error when it is not one."""
  path = os.path.join(workdir, experiments.RESULTS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} does not exist: run `python -m crdoco_jax.experiments "
        f"--workdir={workdir} ...` first (it writes the file at the end).")
  with open(path) as f:
    results = json.load(f)
  if "methods" not in results or "metric" not in results:
    raise ValueError(f"{path} has no 'methods'/'metric': it is a single "
                     "run's results.json, not a table's (pass the table's "
                     "workdir, the folder above METHOD/seed_S).")
  return results


def _metric(methods: Dict[str, Any], name: str) -> Optional[Dict[str, float]]:
  return methods.get(name, {}).get("metric")


def paired(methods: Dict[str, Any], a: str, b: str) -> Dict[int, float]:
  """``{seed: a - b}`` over the seeds both methods finished."""
  pa = methods.get(a, {}).get("per_seed", {})
  pb = methods.get(b, {}).get("per_seed", {})
  return {int(s): pa[s] - pb[s] for s in sorted(pa, key=int) if s in pb}


def compare_pair(results: Dict[str, Any], min_gap: float) -> Dict[str, Any]:
  """One pair's row: the four methods' means, the gain of the consistency
  loss, the headroom and the two tests (None where a method is missing)."""
  methods = results["methods"]
  lo, hi = _metric(methods, "source_only"), _metric(methods, "oracle")
  ours, without = _metric(methods, ADAPTED), _metric(methods, WITHOUT)
  # Gains count in the direction in which the oracle beats source-only
  # (mIoU up, EPE or abs rel down); by name where that is unknown.
  if lo and hi and hi["mean"] != lo["mean"]:
    sign = 1.0 if hi["mean"] > lo["mean"] else -1.0
  else:
    sign = 1.0 if results["metric"] == "target_miou" else -1.0
  row = dict(metric=results["metric"],
             means={m: _metric(methods, m) for m in
                    ("source_only", ADAPTED, WITHOUT, "oracle")},
             gap_closed={m: methods.get(m, {}).get("gap_closed")
                         for m in (ADAPTED, WITHOUT)},
             gain=None, paired=None, headroom=None,
             gap_test=None, gain_test=None)
  if ours and without:
    row["gain"] = sign * (ours["mean"] - without["mean"])
    diffs = paired(methods, ADAPTED, WITHOUT)
    row["paired"] = {s: sign * d for s, d in diffs.items()}
    row["gain_test"] = row["gain"] > max(ours["std"], without["std"])
  if row["gap_closed"][ADAPTED] is not None:
    row["gap_test"] = row["gap_closed"][ADAPTED] >= min_gap
  diag = methods.get(WITHOUT, {}).get("diagnostics")
  if diag:
    row["headroom"] = (diag["f_s_translated_miou"]["mean"]
                       - diag["f_t_miou"]["mean"])
  return row


def _cell(m: Optional[Dict[str, float]], std: bool = True) -> str:
  if m is None:
    return "n/a"
  return f"{m['mean']:.2f} ± {m['std']:.2f}" if std else f"{m['mean']:.2f}"


def _pct(x: Optional[float], threshold: float) -> str:
  """A share as a whole percentage, or with one decimal where the whole
  number would land on the other side of ``threshold`` (0.599 -> 59.9%,
  not a passing-looking 60%)."""
  if x is None:
    return "n/a"
  if (round(100 * x) >= round(100 * threshold)) != (x >= threshold):
    tenths = math.floor if x < threshold else math.ceil
    return f"{tenths(1000 * x) / 10:.1f}%"
  return f"{round(100 * x):d}%"


def _test(x: Optional[bool]) -> str:
  return "n/a" if x is None else ("yes" if x else "**no**")


def markdown(rows: Dict[str, Dict[str, Any]],
             sources: Dict[str, str], min_gap: float) -> str:
  """The rows as one table, then where each came from."""
  lines = [
      "| pair | source-only | CrDoCo | without consistency | oracle | "
      "gap closed (CrDoCo / without) | gain, means | gain, paired by seed | "
      "headroom | gap >= " + f"{round(100 * min_gap)}% | gain > seed std |",
      "|---" * 11 + "|"]
  for name, r in rows.items():
    means = r["means"]
    pairs = ("n/a" if r["paired"] is None else
             ", ".join(f"{d:+.2f}" for d in r["paired"].values()))
    lines.append(
        f"| {name} | {_cell(means['source_only'], False)} | "
        f"{_cell(means[ADAPTED])} | {_cell(means[WITHOUT])} | "
        f"{_cell(means['oracle'], False)} | "
        f"{_pct(r['gap_closed'][ADAPTED], min_gap)} / "
        f"{_pct(r['gap_closed'][WITHOUT], min_gap)} | "
        + ("n/a" if r["gain"] is None else f"{r['gain']:+.2f}") +
        f" | {pairs} | "
        + ("n/a" if r["headroom"] is None else f"{r['headroom']:+.1f}") +
        f" | {_test(r['gap_test'])} | {_test(r['gain_test'])} |")
  metrics = sorted({r["metric"] for r in rows.values()})
  lines += ["", f"Metric: {', '.join(metrics)}. Gains count in the direction "
            "in which the oracle beats source-only. Headroom: "
            "F_S(G_T->S(I_T)) - F_T(I_T) mIoU of the run without the "
            "consistency loss. \"gain > seed std\": the gain on the means "
            "exceeds both methods' seed std.", "", "Tables:"]
  lines += [f"- {name}: `{sources[name]}`" for name in rows]
  return "\n".join(lines) + "\n"


def compare(tables: Sequence[Tuple[str, str]], min_gap: float = 0.6
            ) -> Tuple[Dict[str, Dict[str, Any]], str]:
  """``[(name, workdir)]`` -> (rows, markdown)."""
  names = [n for n, _ in tables]
  if len(set(names)) != len(names):
    raise ValueError(f"--table names repeat: {names}; give each pair its "
                     "own name.")
  rows = {n: compare_pair(load_results(w), min_gap) for n, w in tables}
  return rows, markdown(rows, dict(tables), min_gap)


def main(argv: List[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _TABLES.value:
    raise app.UsageError("Give at least one --table=NAME=WORKDIR.")
  rows, text = compare([parse_table(t) for t in _TABLES.value],
                       _MIN_GAP.value)
  print(text, end="")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text)
    with open(os.path.splitext(_OUT.value)[0] + ".json", "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
