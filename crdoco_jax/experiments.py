r"""Experiment runner: methods x seeds, one process per run, one table.

  python -m crdoco_jax.experiments --config=configs/seg.py:demo \
      --workdir=/tmp/crdoco_table --seeds=0,1,2 \
      --methods=source_only,crdoco,no_consistency,oracle

  # two folder domains (see README, "Datasets"):
  python -m crdoco_jax.experiments --config=configs/seg.py:demo \
      --workdir=/tmp/my_pair --source_dir=/data/a --target_dir=/data/b \
      --set=data.num_classes=5

Each (method, seed) trains with ``launch.py`` in its own process under
``WORKDIR/METHOD/seed_S`` (so one failed run loses nothing else), with its
output in ``log.txt`` there; a run whose ``results.json`` is complete is not
run again. Methods whose configs differ only in what the adaptation phase
reads (``ADAPT_ONLY_KEYS``: crdoco and its ablations) share the translators'
CycleGAN pretraining: it runs once per seed under ``WORKDIR/_pretraining``
and each of them starts from its checkpoint, exactly where a run of its own
would have been (``--noshare_pretraining`` to run it per method). The
runner then writes ``WORKDIR/results.json`` and
``WORKDIR/results.md``: the target metric's mean and standard deviation over
seeds per method, per-class IoU, the share of the source-only -> oracle gap
each method closes, wall times, failed runs and the code version (git
commit, CPU) each run started from, and (segmentation) how
F_T(I_T) and F_S(G_T->S(I_T)) compare; and ``WORKDIR/figure.png``
(segmentation): target images, their translation to the source style, the
source-only and CrDoCo predictions and the label, side by side.
"""
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import app, flags, logging
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FILE = "run.json"        # per run: command, return code, wall time
RESULTS_FILE = "results.json"  # per run (written by train.py) and summary
DIAGNOSTICS_FILE = "diagnostics.json"  # per run: see diagnose()
# Per-run diagnostics and their column headers (see diagnose()).
DIAGNOSTICS = {"f_t_miou": "F_T(I_T) mIoU",
               "f_s_translated_miou": "F_S(G_T->S(I_T)) mIoU",
               "agreement": "pixels where they agree",
               "f_s_source_miou": "F_S(I_S) mIoU, source val",
               # translator.ideal_t2s runs only: F_S on what it trained on.
               "f_s_ideal_miou": "F_S(ideal I_T->S) mIoU"}

_CONFIG = flags.DEFINE_string(
    "config", "configs/seg.py:demo",
    "Config file and variants without the method, e.g. configs/seg.py:demo.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where runs and tables go.")
_METHODS = flags.DEFINE_list(
    "methods", ["source_only", "crdoco", "no_consistency", "oracle"],
    "Methods (config variants) to train.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_SET = flags.DEFINE_multi_string(
    "set", [], "Config override KEY=VALUE for every run, e.g. "
    "train.num_steps=500 (passed as --config.KEY=VALUE).")
_SOURCE_DIR = flags.DEFINE_string(
    "source_dir", None, "Source folder domain (sets source.name=folder).")
_TARGET_DIR = flags.DEFINE_string(
    "target_dir", None, "Target folder domain (sets target.name=folder).")
_FIGURE_IMAGES = flags.DEFINE_integer("figure_images", 4,
                                      "Target images in figure.png (0: none).")
_SHARE_PRETRAINING = flags.DEFINE_bool(
    "share_pretraining", True,
    "Run the translators' CycleGAN pretraining (translator.pretrain_steps) "
    "once per seed for the methods that differ only after it, and start "
    "each of them from its checkpoint.")


def run_dir(workdir: str, method: str, seed: int) -> str:
  return os.path.join(workdir, method, f"seed_{seed}")


def overrides(sets: Sequence[str], source_dir: Optional[str] = None,
              target_dir: Optional[str] = None) -> List[str]:
  """``--set`` values and folder domains as ``KEY=VALUE`` strings."""
  out = []
  for name, path in (("source", source_dir), ("target", target_dir)):
    if path:
      out += [f"{name}.name=folder", f"{name}.dir={os.path.abspath(path)}",
              f"{name}.builder_config="]
  for s in sets:
    if "=" not in s:
      raise ValueError(f"--set {s!r} is not KEY=VALUE (e.g. "
                       "--set=train.num_steps=500).")
    out.append(s)
  return out


def launch_command(config: str, method: str, seed: int, workdir: str,
                   sets: Sequence[str]) -> List[str]:
  """The ``launch.py`` command line of one run."""
  file, _, variants = config.partition(":")
  variants = ",".join(v for v in (variants, method) if v)
  return ([sys.executable, os.path.join(_ROOT, "launch.py"),
           f"--config={file}:{variants}", f"--workdir={workdir}",
           f"--config.seed={seed}"]
          + [f"--config.{s}" for s in sets])


# Config keys that only the adaptation phase reads (train_step.py): methods
# that differ in nothing else run an identical pretraining phase, since the
# batches of a step are a pure function of (seed, step).
ADAPT_ONLY_KEYS = ("method", "loss.task", "loss.consistency", "loss.feat_adv",
                   "loss.feat_gan", "loss.aux.", "loss.adapt_start",
                   "loss.adapt_ramp", "loss.consistency_grad",
                   "loss.consistency_balance", "loss.consistency_form",
                   "loss.class_prior", "loss.task_reconstructed",
                   "loss.semantic", "task_net.source_jitter",
                   "translator.frozen",
                   "translator.task_gradients", "translator.ideal_t2s",
                   "optim.task_net.",
                   "optim.d_feat.", "train.num_steps")
PRETRAIN_DIR = "_pretraining"
COMPILATION_CACHE_DIR = "_jax_cache"


def pretraining_key(config) -> Optional[str]:
  """What a run's pretraining phase depends on (a JSON string), or None if
  it has none (no translators, or ``translator.pretrain_steps`` 0)."""
  # pylint: disable=g-import-not-at-top
  from crdoco_jax import checkpointing, state
  if not state.uses_translator(config) or not config.translator.pretrain_steps:
    return None
  flat = checkpointing.flat_config(config.to_dict())
  return json.dumps({k: v for k, v in flat.items()
                     if not k.startswith(ADAPT_ONLY_KEYS)}, sort_keys=True,
                    default=str)


def pretraining_groups(config_arg: str, methods: Sequence[str],
                       sets: Sequence[str]) -> Dict[str, List[str]]:
  """``{first method: methods}`` for every group of at least two methods
  with the same pretraining phase (``--set`` overrides applied)."""
  groups: Dict[str, List[str]] = {}
  for method in methods:
    try:
      key = pretraining_key(load_config(config_arg, method, sets))
    except Exception:  # pylint: disable=broad-except
      continue  # an unknown method fails in its own run, with its own log
    if key is not None:
      groups.setdefault(key, []).append(method)
  return {g[0]: g for g in groups.values() if len(g) > 1}


def pretrain_shared(config_arg: str, workdir: str, method: str, seed: int,
                    sets: Sequence[str]) -> Optional[str]:
  """Runs (or finds) the pretraining of ``method``'s group for ``seed``;
  returns its checkpoint folder, or None if it failed."""
  steps = load_config(config_arg, method, sets).translator.pretrain_steps
  directory = run_dir(os.path.join(workdir, PRETRAIN_DIR), method, seed)
  checkpoint = os.path.join(directory, "checkpoints", str(steps))
  if finished(directory) is None:
    command = launch_command(config_arg, method, seed, directory,
                             list(sets) + [f"train.num_steps={steps}"])
    logging.info("pretraining for seed %d: %s", seed, " ".join(command))
    run = run_one(command, directory)
    if finished(directory) is None:
      logging.error("The shared pretraining of seed %d failed (exit code "
                    "%d); its output is in %s/log.txt. Its methods will "
                    "pretrain on their own.", seed, run["returncode"],
                    directory)
      return None
  return checkpoint if os.path.isdir(checkpoint) else None


def _read_json(directory: str, name: str) -> Optional[Dict[str, Any]]:
  """``directory/name`` parsed, or None if it is missing or half-written."""
  try:
    with open(os.path.join(directory, name)) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def finished(directory: str) -> Optional[Dict[str, Any]]:
  """The run's results if it ran to its last step, else None."""
  result, run = (_read_json(directory, n) for n in (RESULTS_FILE, RUN_FILE))
  ok = result is not None and run is not None and run.get("returncode") == 0
  return result if ok else None


def compilation_cache_env(workdir: str, environ: Dict[str, str]
                          ) -> Dict[str, str]:
  """Environment for the runs: one persistent JAX compilation cache in
  ``workdir`` unless ``environ`` names one. Every seed of a method compiles
  the same programs, so only its first run compiles them (demo source-only
  run, 2 CPU cores: 15.5 s to its 10th step cold, 5.9 s warm)."""
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return {}
  return {"JAX_COMPILATION_CACHE_DIR": os.path.join(workdir,
                                                    COMPILATION_CACHE_DIR)}


def _git(root: str, *args: str) -> Optional[str]:
  """``git args`` in ``root``: its output, or None (no git, not a checkout)."""
  try:
    return subprocess.run(["git", *args], cwd=root, capture_output=True,
                          text=True, check=True,
                          stdin=subprocess.DEVNULL).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _cpu_name() -> str:
  """The CPU's model name: runs repeat to the last digit only on the same
  kind of CPU (README, "Reliability")."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def code_version(root: str = _ROOT) -> Dict[str, Any]:
  """What a run is made by: the git commit of ``root`` and whether tracked
  files differed from it (both None outside a git checkout), and the CPU."""
  commit = _git(root, "rev-parse", "HEAD")
  changed = (bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
             if commit else None)
  return dict(commit=commit, uncommitted_changes=changed, cpu=_cpu_name())


def describe_version(code: Optional[Dict[str, Any]]) -> str:
  """One line for ``code_version()``'s dict (None: not recorded)."""
  if not code:
    return "not recorded (a run.json older than the record)"
  commit = code["commit"][:12] if code["commit"] else "no git checkout"
  changes = " with uncommitted changes" if code["uncommitted_changes"] else ""
  return f"commit {commit}{changes}, {code['cpu']}"


def run_one(command: List[str], directory: str) -> Dict[str, Any]:
  """Runs ``command`` to completion with its output in ``log.txt``; its
  ``run.json`` records the command, exit code, wall time and the code
  version it started from."""
  os.makedirs(directory, exist_ok=True)
  code = code_version()
  t0 = time.time()
  with open(os.path.join(directory, "log.txt"), "w") as log:
    returncode = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT,
                                 cwd=_ROOT, stdin=subprocess.DEVNULL)
  run = dict(command=command, returncode=returncode,
             wall_seconds=time.time() - t0, code=code)
  with open(os.path.join(directory, RUN_FILE), "w") as f:
    json.dump(run, f, indent=1)
  return run


def _wall_seconds(directory: str) -> Optional[float]:
  return (_read_json(directory, RUN_FILE) or {}).get("wall_seconds")


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
  return dict(mean=statistics.fmean(values),
              std=statistics.stdev(values) if len(values) > 1 else 0.0,
              n=len(values))


def primary_metric(result: Dict[str, Any]) -> str:
  """The metric a table ranks by: mIoU (segmentation), else the first
  ``target_*`` metric train.py wrote (abs rel for depth, EPE for flow)."""
  if "target_miou" in result:
    return "target_miou"
  return next(k for k in result if k.startswith("target_"))


def summarize(runs: Dict[str, Dict[int, Dict[str, Any]]]) -> Dict[str, Any]:
  """Aggregates ``{method: {seed: run}}`` (a run: ``result`` or None,
  ``wall_seconds``, ``returncode``) into per-method statistics."""
  done = [r["result"] for m in runs.values() for r in m.values()
          if r["result"]]
  metric = primary_metric(done[0]) if done else None
  methods = {}
  for method, seeds in runs.items():
    ok = {s: r for s, r in seeds.items() if r["result"]}
    entry = dict(seeds=sorted(ok), failed_seeds=sorted(set(seeds) - set(ok)),
                 wall_seconds=_mean_std([r["wall_seconds"]
                                         for r in ok.values()]) if ok else None)
    if ok:
      entry["metric"] = _mean_std([r["result"][metric] for r in ok.values()])
      entry["per_seed"] = {s: r["result"][metric] for s, r in ok.items()}
      per_class = [r["result"]["per_class_iou"] for r in ok.values()
                   if "per_class_iou" in r["result"]]
      if per_class:
        entry["per_class_iou"] = {
            n: statistics.fmean(p[n] for p in per_class) for n in per_class[0]}
      diags = [r["diagnostics"] for r in ok.values() if r.get("diagnostics")]
      if diags:
        # (F_S on the source val split needs a source domain with one.)
        entry["diagnostics"] = {
            k: _mean_std([d[k] for d in diags]) for k in DIAGNOSTICS
            if all(d.get(k) is not None for d in diags)}
        entry["diagnostics_per_class"] = {
            net: {n: statistics.fmean(d["per_class"][net][n] for d in diags)
                  for n in diags[0]["per_class"][net]}
            for net in diags[0]["per_class"]}
    methods[method] = entry
  lo, hi = (methods.get(m, {}).get("metric") for m in ("source_only",
                                                        "oracle"))
  if lo and hi and hi["mean"] != lo["mean"]:
    for entry in methods.values():
      if "metric" in entry:
        entry["gap_closed"] = ((entry["metric"]["mean"] - lo["mean"])
                               / (hi["mean"] - lo["mean"]))
  return dict(metric=metric, methods=methods)


def code_versions(runs: Dict[str, Dict[int, Dict[str, Any]]], workdir: str,
                  groups: Dict[str, List[str]], seeds: Sequence[int]
                  ) -> List[Dict[str, Any]]:
  """The distinct code versions the table's runs (shared pretraining
  included) started from, each with the runs that used it: more than one
  means the table mixes code (or CPUs), and may not repeat."""
  made = [(f"{m} seed {s}", r.get("code")) for m, seeds_ in runs.items()
          for s, r in seeds_.items()]
  for m in groups:
    for s in seeds:
      run = _read_json(run_dir(os.path.join(workdir, PRETRAIN_DIR), m, s),
                       RUN_FILE)
      if run is not None:  # (none if every run of the group had started)
        made.append((f"pretraining seed {s}", run.get("code")))
  versions: List[Dict[str, Any]] = []
  for name, code in made:
    match = [v for v in versions if v["code"] == code]
    if match:
      match[0]["runs"].append(name)
    else:
      versions.append(dict(code=code, runs=[name]))
  return versions


def total_run_seconds(runs: Dict[str, Dict[int, Dict[str, Any]]],
                      pretraining: Dict[str, Dict[int, Optional[float]]]
                      ) -> float:
  """Every run's wall time summed, failed runs and the shared pretraining
  included: what the table costs from an empty workdir, less the runner's
  own scoring (diagnostics, figure)."""
  times = [r.get("wall_seconds") for m in runs.values() for r in m.values()]
  times += [t for seeds in pretraining.values() for t in seeds.values()]
  return float(sum(t for t in times if t is not None))


def markdown(summary: Dict[str, Any], command: str) -> str:
  """``results.md``: the summary as tables."""
  metric, methods = summary["metric"], summary["methods"]
  # mIoU is in %; abs rel, EPE and the like need a third decimal.
  digits = 2 if metric == "target_miou" else 3
  lines = [f"Command: `{command}`", "",
           f"| method | {metric} (mean ± std) | seeds | per seed | "
           "gap closed | wall time / run |", "|---|---|---|---|---|---|"]
  for name, e in methods.items():
    if "metric" not in e:
      lines.append(f"| {name} | failed | 0 | | | |")
      continue
    m = e["metric"]
    per_seed = ", ".join(f"{v:.{digits}f}" for v in e["per_seed"].values())
    gap = (f"{round(100 * e['gap_closed']):d}%" if "gap_closed" in e
           else "")
    lines.append(f"| {name} | {m['mean']:.{digits}f} ± {m['std']:.{digits}f} "
                 f"| {m['n']} | "
                 f"{per_seed} | {gap} | {e['wall_seconds']['mean'] / 60:.1f} "
                 "min |")
  for group, times in zip(summary.get("pretraining_groups", []),
                          summary.get("pretraining", {}).values()):
    done = [t for t in times.values() if t is not None]
    if done:  # else the runs predate sharing, or it failed
      lines += ["", f"{', '.join(group)} start from one shared translator "
                f"pretraining per seed (`{PRETRAIN_DIR}/`, "
                f"{statistics.fmean(done) / 60:.1f} min per seed; not in their "
                "wall time)."]
  if "total_run_seconds" in summary:
    lines += ["", f"All runs together: {summary['total_run_seconds'] / 60:.1f}"
              " min (their wall times summed, pretraining included)."]
  versions = summary.get("code_versions", [])
  if len(versions) == 1:
    lines += ["", f"Code: {describe_version(versions[0]['code'])}."]
  elif versions:
    lines += ["", f"**The runs used {len(versions)} code versions** (a table "
              "that mixes them may not repeat; each run's `run.json`):"]
    lines += [f"- {describe_version(v['code'])}: {', '.join(v['runs'])}"
              for v in versions]
  failed = [f"{n} seed {s}" for n, e in methods.items()
            for s in e["failed_seeds"]]
  if failed:
    lines += ["", "Failed runs (see their log.txt): " + ", ".join(failed)]
  diagnosed = {n: e["diagnostics"] for n, e in methods.items()
               if "diagnostics" in e}
  if diagnosed:
    keys = [k for k in DIAGNOSTICS
            if all(k in d for d in diagnosed.values())]
    lines += ["", "The two predictions the consistency loss ties together, on "
              "the target val split, and F_S on the source val split where "
              "there is one (mean ± std over seeds):", "",
              "| method | " + " | ".join(DIAGNOSTICS[k] for k in keys) + " |",
              "|---|" + "---|" * len(keys)]
    for n, d in diagnosed.items():
      lines.append(f"| {n} | " + " | ".join(
          f"{d[k]['mean']:.2f} ± {d[k]['std']:.2f}" + ("%" if k == "agreement"
                                                      else "")
          for k in keys) + " |")
  with_classes = {n: e for n, e in methods.items() if "per_class_iou" in e}
  if with_classes:
    classes = list(next(iter(with_classes.values()))["per_class_iou"])
    lines += ["", "Per-class IoU (mean over seeds):", "",
              "| method | " + " | ".join(classes) + " |",
              "|---|" + "---|" * len(classes)]
    for n, e in with_classes.items():
      lines.append(f"| {n} | " + " | ".join(
          f"{e['per_class_iou'][c]:.1f}" for c in classes) + " |")
      if "diagnostics_per_class" in e:
        lines.append(f"| {n}: F_S(G_T->S(I_T)) | " + " | ".join(
            f"{e['diagnostics_per_class']['f_s_translated'][c]:.1f}"
            for c in classes) + " |")
  return "\n".join(lines) + "\n"


def _recorded_config(config_arg: str, method: str, directory: str):
  """The config a run recorded in its directory, overrides included."""
  from crdoco_jax import checkpointing  # pylint: disable=g-import-not-at-top
  return checkpointing.read_config(directory, load_config(config_arg, method))


def load_run(config_arg: str, workdir: str, method: str, seed: int):
  """``(config, state, nets)`` of a finished run, with the config it
  recorded (overrides included); None if the run has not finished."""
  # pylint: disable=g-import-not-at-top
  from crdoco_jax import train
  from crdoco_jax.models import build_networks
  directory = run_dir(workdir, method, seed)
  if not finished(directory):
    return None
  config = _recorded_config(config_arg, method, directory)
  state, _ = train.initial_state(config, directory)
  return config, state, build_networks(config)


def _val(config, batch_size: int, domain: str = "target"):
  """The val split of the run's target (or source) domain, on one device."""
  from crdoco_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.eval_per_device_batch = batch_size
    if domain == "source":  # eval_batches reads config.target
      config.target = config.source
  return input_pipeline.eval_batches(config, num_local_devices=1,
                                     process_index=0, process_count=1)


def _apply(nets, state):
  """Jitted ``(F_T or F_S logits, G_T->S)`` of a run's state."""
  import jax  # pylint: disable=g-import-not-at-top
  task = jax.jit(lambda x, domain: nets.task.apply(
      {"params": state.task.params, "batch_stats": state.task.batch_stats},
      x, domain, train=False)["main"], static_argnums=1)
  return task, _translator(nets, state, "T2S")


def _translator(nets, state, direction: str):
  """Jitted ``G_{direction}`` (``'S2T'`` or ``'T2S'``) of a run's state."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda x: nets.translator.apply(
      {"params": state.translator.params}, x, direction))


def view_predictions(config, task, t2s, batch_size: int = 32):
  """Per target val batch ``(labels, F_T(I_T) classes, F_S(G_T->S(I_T))
  classes, G_T->S(I_T))``, the first three ``[N, H, W]`` numpy arrays;
  ``task, t2s`` from :func:`_apply`."""
  for batch in _val(config, batch_size):
    x, y = batch["image"][0], np.asarray(batch["label"][0])
    x_ts = t2s(x)
    yield (y, np.asarray(task(x, "T")).argmax(-1),
           np.asarray(task(x_ts, "S")).argmax(-1), x_ts)


def diagnose(config_arg: str, workdir: str, method: str, seed: int
             ) -> Optional[Dict[str, float]]:
  """For a finished segmentation run with translators, on the whole target
  val split: mIoU of F_T(I_T) and of F_S(G_T->S(I_T)) (the two predictions
  the consistency loss ties together) and the share of labelled pixels on
  which they agree, in %; and the mIoU of F_S on the source val split
  (None without one), which tells what F_S loses on translated images.
  Cached in the run's ``diagnostics.json``."""
  directory = run_dir(workdir, method, seed)
  path = os.path.join(directory, DIAGNOSTICS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    # An older version's file lacks F_S on the source: redo it, if the
    # run's checkpoints are still there (results copied without them keep
    # what they have).
    redo = "f_s_source_miou" not in cached or (
        "f_s_ideal_miou" not in cached and _ideal(_recorded_config(
            config_arg, method, directory)))
    if not redo or not os.path.isdir(os.path.join(directory, "checkpoints")):
      return cached
  if load_config(config_arg, method).task != "segmentation":
    return None  # before restoring anything
  loaded = load_run(config_arg, workdir, method, seed)
  if loaded is None or loaded[1].translator is None:
    return None
  config, state, nets = loaded
  from crdoco_jax import evaluate  # pylint: disable=g-import-not-at-top
  task, t2s = _apply(nets, state)
  c, ignore = config.data.num_classes, config.data.ignore_label
  cms, agree, labelled = np.zeros((2, c, c), np.int64), 0, 0
  for y, p_t, p_s, _ in view_predictions(config, task, t2s):
    for i, p in enumerate((p_t, p_s)):
      cms[i] += np.asarray(evaluate.confusion_matrix(p, y, c, ignore))
    mask = y != ignore
    agree += int(np.sum((p_t == p_s) & mask))
    labelled += int(np.sum(mask))
  per_class = lambda cm: dict(zip(config.data.class_names, (
      100 * evaluate.iou_from_confusion(cm)).tolist()))
  out = dict(f_t_miou=100 * evaluate.mean_iou(cms[0]),
             f_s_translated_miou=100 * evaluate.mean_iou(cms[1]),
             agreement=100 * agree / max(labelled, 1),
             # Where the two nets are good differs by class; the
             # consistency loss can only keep what they share.
             per_class=dict(f_t=per_class(cms[0]),
                            f_s_translated=per_class(cms[1])))
  out["f_s_source_miou"] = None
  if config.source.eval_split:
    cm = np.zeros((c, c), np.int64)
    for batch in _val(config, 32, "source"):
      p = np.asarray(task(batch["image"][0], "S")).argmax(-1)
      cm += np.asarray(evaluate.confusion_matrix(p, batch["label"][0], c,
                                                 ignore))
    out["f_s_source_miou"] = 100 * evaluate.mean_iou(cm)
  if _ideal(config):
    out["f_s_ideal_miou"] = 100 * evaluate.mean_iou(
        ideal_view_confusion(config, lambda x: task(x, "S")))
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
  return out


def _ideal(config) -> bool:
  return bool(config.translator.get("ideal_t2s", False))


def ideal_view_confusion(config, predict_s) -> np.ndarray:
  """Confusion matrix ``[C, C]`` of ``predict_s`` (images ``[N, H, W, 3]``
  -> F_S logits ``[N, H, W, C]``) on the target val scenes rendered in the
  source style (``demo_seg.restyle``): the view a ``translator.ideal_t2s``
  run gave F_S in training, on the val split."""
  # pylint: disable=g-import-not-at-top
  from crdoco_jax import evaluate
  from crdoco_jax.data import demo_seg
  c = config.data.num_classes
  cm = np.zeros((c, c), np.int64)
  for i, batch in enumerate(_val(config, 32)):
    y, ignore = batch["label"][0], config.data.ignore_label
    # Padding examples (ignored in the scores) are rendered as sky.
    x = demo_seg.restyle(np.where(y == ignore, 0, y),
                         config.source.builder_config, (config.seed, i, 13))
    p = np.asarray(predict_s(x)).argmax(-1)
    cm += np.asarray(evaluate.confusion_matrix(p, y, c, ignore))
  return cm


def figure(config_arg: str, workdir: str, seed: int, num_images: int
           ) -> Optional[np.ndarray]:
  """Target val images | I_T->S | source-only | CrDoCo | label, from the
  ``seed`` runs of source_only and crdoco; None if either is missing."""
  from crdoco_jax import visualize  # pylint: disable=g-import-not-at-top
  loaded = {m: load_run(config_arg, workdir, m, seed)
            for m in ("source_only", "crdoco")}
  if any(v is None for v in loaded.values()):
    return None
  config = loaded["crdoco"][0]
  if config.task != "segmentation":
    return None
  batch = next(_val(config, num_images))
  x, y = batch["image"][0], batch["label"][0]
  predict = {m: _apply(nets, state) for m, (_, state, nets) in loaded.items()}
  x_ts = np.asarray(predict["crdoco"][1](x))
  palette = visualize.palette_for(config.data.num_classes,
                                  config.data.class_names)
  color = lambda labels: visualize.colorize(labels, palette)
  p_src, p_crdoco = (np.asarray(predict[m][0](x, "T")).argmax(-1)
                     for m in ("source_only", "crdoco"))
  return visualize.image_grid([
      [visualize.to_uint8_image(x[i]), visualize.to_uint8_image(x_ts[i]),
       color(p_src[i]), color(p_crdoco[i]), color(y[i])]
      for i in range(len(x))])


def load_config(config_arg: str, method: str, sets: Sequence[str] = ()):
  """The config of ``FILE:VARIANTS`` plus ``method`` and ``--set``
  overrides, parsed exactly as launch.py parses its flags."""
  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags
  file, _, variants = config_arg.partition(":")
  path = file if os.path.isabs(file) else os.path.join(_ROOT, file)
  variants = ",".join(v for v in (variants, method) if v)
  argv = (["experiments", f"--config={path}:{variants}"]
          + [f"--config.{s}" for s in sets])
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def start_from_pretraining(config: str, workdir: str, group: Sequence[str],
                           seed: int, sets: Sequence[str]) -> None:
  """Seeds the unstarted runs of ``group`` with the group's shared
  pretraining checkpoint (running it first if needed)."""
  fresh = [run_dir(workdir, m, seed) for m in group
           if not os.path.isdir(os.path.join(run_dir(workdir, m, seed),
                                             "checkpoints"))]
  if not fresh:
    return
  checkpoint = pretrain_shared(config, workdir, group[0], seed, sets)
  if checkpoint is None:
    return
  for directory in fresh:
    shutil.copytree(checkpoint, os.path.join(
        directory, "checkpoints", os.path.basename(checkpoint)))
    logging.info("%s starts from the shared pretraining %s.", directory,
                 checkpoint)


def run_experiments(config: str, workdir: str, methods: Sequence[str],
                    seeds: Sequence[int], sets: Sequence[str],
                    figure_images: int = 4, share_pretraining: bool = True
                    ) -> Dict[str, Any]:
  """Trains every missing (method, seed) run, then writes the tables."""
  runs = {m: {} for m in methods}
  groups = (pretraining_groups(config, methods, sets) if share_pretraining
            else {})
  for seed in seeds:  # seeds outermost: a partial table covers every method
    for group in groups.values():
      start_from_pretraining(config, workdir, group, seed, sets)
    for method in methods:
      directory = run_dir(workdir, method, seed)
      result = finished(directory)
      if result is not None:
        logging.info("%s seed %d: finished earlier, skipped.", method, seed)
        run = _read_json(directory, RUN_FILE)
      else:
        command = launch_command(config, method, seed, directory, sets)
        logging.info("%s seed %d: %s", method, seed, " ".join(command))
        run = run_one(command, directory)
        result = finished(directory)
        if result is None:
          logging.error("%s seed %d failed (exit code %d); its output is in "
                        "%s/log.txt.", method, seed, run["returncode"],
                        directory)
      runs[method][seed] = dict(result=result, **run)
      if result is not None:
        runs[method][seed]["diagnostics"] = diagnose(config, workdir, method,
                                                     seed)
  summary = summarize(runs)
  summary["pretraining"] = {
      m: {seed: _wall_seconds(run_dir(os.path.join(workdir, PRETRAIN_DIR), m,
                                      seed)) for seed in seeds}
      for m in groups}
  summary["pretraining_groups"] = list(groups.values())
  summary["code_versions"] = code_versions(runs, workdir, groups, seeds)
  summary["total_run_seconds"] = total_run_seconds(runs,
                                                   summary["pretraining"])
  command = " ".join([os.path.basename(sys.executable), "-m",
                      "crdoco_jax.experiments"] + sys.argv[1:])
  summary.update(config=config, overrides=list(sets), command=command)
  with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown(summary, command))
  if figure_images > 0 and ("source_only" in methods and "crdoco" in methods):
    grid = figure(config, workdir, seeds[0], figure_images)
    if grid is not None:
      from crdoco_jax import visualize  # pylint: disable=g-import-not-at-top
      visualize.save_png(os.path.join(workdir, "figure.png"), grid)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # What the runner scores with, loaded now (the functions above import it
  # late, so that crdoco_jax.compare stays light): first imported hours
  # later, after the code changed under a long table, a module would meet
  # the older ones already loaded (session 44: an ImportError).
  # pylint: disable=g-import-not-at-top,unused-import
  from crdoco_jax import evaluate, train, visualize
  from crdoco_jax.data import demo_seg, input_pipeline
  os.makedirs(_WORKDIR.value, exist_ok=True)
  os.environ.update(compilation_cache_env(_WORKDIR.value, os.environ))
  sets = overrides(_SET.value, _SOURCE_DIR.value, _TARGET_DIR.value)
  summary = run_experiments(_CONFIG.value, _WORKDIR.value, _METHODS.value,
                            [int(s) for s in _SEEDS.value], sets,
                            _FIGURE_IMAGES.value, _SHARE_PRETRAINING.value)
  with open(os.path.join(_WORKDIR.value, "results.md")) as f:
    print(f.read())
  failed = sum(len(e["failed_seeds"]) for e in summary["methods"].values())
  if failed:
    sys.exit(f"{failed} run(s) failed; see results.md.")


if __name__ == "__main__":
  # Here, not at import: crdoco_jax.compare imports this module.
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
