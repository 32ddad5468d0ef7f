"""The experiment runner: methods x seeds as processes, tables, figure."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from crdoco_jax import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(workdir, methods, seeds, sets, *extra):
  command = [sys.executable, "-m", "crdoco_jax.experiments",
             "--config=configs/seg.py:tiny", f"--workdir={workdir}",
             f"--methods={methods}", f"--seeds={seeds}"]
  command += [f"--set={s}" for s in sets] + list(extra)
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                        timeout=900, stdin=subprocess.DEVNULL)


def test_summarize_gap_and_statistics():
  run = lambda miou, wall=60.0: dict(
      result=dict(target_miou=miou, per_class_iou={"a": miou, "b": 0.0}),
      wall_seconds=wall, returncode=0)
  failed = dict(result=None, wall_seconds=5.0, returncode=1)
  summary = experiments.summarize({
      "source_only": {0: run(10.0), 1: run(20.0)},
      "crdoco": {0: run(40.0), 1: run(30.0), 2: failed},
      "oracle": {0: run(65.0), 1: run(75.0)}})
  m = summary["methods"]
  assert summary["metric"] == "target_miou"
  assert m["crdoco"]["metric"]["mean"] == pytest.approx(35.0)
  assert m["crdoco"]["metric"]["std"] == pytest.approx(np.std([40, 30],
                                                              ddof=1))
  assert m["crdoco"]["failed_seeds"] == [2]
  # (35 - 15) / (70 - 15)
  assert m["crdoco"]["gap_closed"] == pytest.approx(20 / 55)
  assert m["source_only"]["gap_closed"] == 0.0
  assert m["oracle"]["gap_closed"] == 1.0
  assert m["crdoco"]["per_class_iou"]["a"] == pytest.approx(35.0)
  table = experiments.markdown(summary, "cmd")
  assert "| crdoco | 35.00 ± 7.07 | 2 |" in table
  assert "crdoco seed 2" in table
  # Regression metrics (lower is better) get three decimals; the gap is
  # the same fraction either way.
  run_depth = lambda v: dict(result=dict(target_abs_rel=v), wall_seconds=1.0,
                             returncode=0)
  depth = experiments.summarize({"source_only": {0: run_depth(0.4001)},
                                 "crdoco": {0: run_depth(0.245)},
                                 "oracle": {0: run_depth(0.155)}})
  assert depth["methods"]["crdoco"]["gap_closed"] == pytest.approx(
      0.1551 / 0.2451)
  table = experiments.markdown(depth, "cmd")
  assert "| crdoco | 0.245 ± 0.000 | 1 | 0.245 | 63% |" in table
  assert "| source_only | 0.400 ± 0.000 | 1 | 0.400 | 0% |" in table


def test_code_version_and_a_table_that_mixes_versions(tmp_path):
  """run.json's record of the code: the git commit, whether tracked files
  differ from it, the CPU; a table whose runs differ says so."""
  repo = str(tmp_path / "repo")
  os.makedirs(repo)
  outside = experiments.code_version(str(tmp_path))
  assert outside["commit"] is None and outside["uncommitted_changes"] is None
  assert outside["cpu"]
  git = lambda *a: subprocess.run(["git", "-C", repo, *a], check=True,
                                  capture_output=True)
  try:
    git("init", "-q")
  except OSError:
    pytest.skip("no git")
  with open(os.path.join(repo, "f.py"), "w") as f:
    f.write("x = 1\n")
  git("add", "f.py")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
  clean = experiments.code_version(repo)
  head = git("rev-parse", "HEAD").stdout.decode().strip()
  assert clean["commit"] == head and clean["uncommitted_changes"] is False
  with open(os.path.join(repo, "f.py"), "a") as f:
    f.write("y = 2\n")
  changed = experiments.code_version(repo)
  assert changed["commit"] == head and changed["uncommitted_changes"] is True

  run = lambda code: dict(result=dict(target_miou=50.0), wall_seconds=1.0,
                          returncode=0, code=code)
  runs = {"crdoco": {0: run(clean), 1: run(changed)},
          "no_consistency": {0: run(clean)}}
  summary = experiments.summarize(runs)
  summary["code_versions"] = experiments.code_versions(
      runs, str(tmp_path), {}, [0, 1])
  assert [v["runs"] for v in summary["code_versions"]] == [
      ["crdoco seed 0", "no_consistency seed 0"], ["crdoco seed 1"]]
  table = experiments.markdown(summary, "cmd")
  assert "**The runs used 2 code versions**" in table
  assert f"commit {head[:12]} with uncommitted changes" in table
  runs["crdoco"][1] = run(clean)
  summary["code_versions"] = experiments.code_versions(
      runs, str(tmp_path), {}, [0, 1])
  table = experiments.markdown(summary, "cmd")
  assert f"Code: commit {head[:12]}, {clean['cpu']}." in table
  assert "code versions" not in table


def test_diagnostics_columns_follow_what_every_seed_has():
  diag = lambda source: dict(f_t_miou=50.0, f_s_translated_miou=40.0,
                             agreement=90.0, f_s_source_miou=source,
                             per_class=dict(f_t={"a": 50.0},
                                            f_s_translated={"a": 40.0}))
  run = lambda source: dict(result=dict(target_miou=50.0), wall_seconds=1.0,
                            returncode=0, diagnostics=diag(source))
  with_source = experiments.summarize({"crdoco": {0: run(70.0),
                                                  1: run(60.0)}})
  d = with_source["methods"]["crdoco"]["diagnostics"]
  assert d["f_s_source_miou"]["mean"] == pytest.approx(65.0)
  assert "| F_S(I_S) mIoU, source val |" in experiments.markdown(
      with_source, "cmd")
  # A source domain without a val split (GTA5): no such column.
  without = experiments.summarize({"crdoco": {0: run(70.0), 1: run(None)}})
  assert "f_s_source_miou" not in without["methods"]["crdoco"]["diagnostics"]
  table = experiments.markdown(without, "cmd")
  assert "source val |" not in table and "| 40.00 ± 0.00 |" in table


def test_overrides_reject_malformed_set():
  with pytest.raises(ValueError, match="train.num_steps"):
    experiments.overrides(["train.num_steps"])
  assert experiments.overrides([], "/a", None)[:2] == [
      "source.name=folder", "source.dir=/a"]


def test_runs_share_a_compilation_cache_unless_one_is_set():
  env = experiments.compilation_cache_env("/w", {})
  assert env == {"JAX_COMPILATION_CACHE_DIR": os.path.join(
      "/w", experiments.COMPILATION_CACHE_DIR)}
  assert experiments.compilation_cache_env(
      "/w", {"JAX_COMPILATION_CACHE_DIR": "/mine"}) == {}


def test_runner_demo_pair_failure_isolation_and_rerun(tmp_path, tfds_dir):
  workdir = str(tmp_path / "table")
  sets = [f"data.tfds_data_dir={tfds_dir}"]
  # crdoco and no_consistency share one translator pretraining; with all
  # 4 steps in it, their own runs only restore and evaluate (keeps the test
  # short; the adaptation step itself is tested in test_train.py).
  proc = _run(workdir, "source_only,crdoco,no_consistency,no_such_method",
              "3", sets + ["translator.pretrain_steps=4"], "--figure_images=2")
  # The unknown method fails on its own; the others finish.
  assert proc.returncode != 0, proc.stdout + proc.stderr
  with open(os.path.join(workdir, "results.json")) as f:
    summary = json.load(f)
  methods = summary["methods"]
  assert methods["no_such_method"]["failed_seeds"] == [3]
  log = os.path.join(workdir, "no_such_method", "seed_3", "log.txt")
  assert "no_such_method" in open(log).read()
  for method in ("source_only", "crdoco"):
    with open(os.path.join(workdir, method, "seed_3", "results.json")) as f:
      result = json.load(f)
    assert result["method"] == method
    assert methods[method]["per_seed"] == {"3": result["target_miou"]}
    assert 0.0 <= result["target_miou"] <= 100.0
  table = open(os.path.join(workdir, "results.md")).read()
  assert "| crdoco |" in table and "no_such_method seed 3" in table
  shared = os.path.join(workdir, experiments.PRETRAIN_DIR, "crdoco", "seed_3")
  assert experiments.finished(shared)["step"] == 4
  assert summary["pretraining_groups"] == [["crdoco", "no_consistency"]]
  for method in ("crdoco", "no_consistency"):
    log = open(os.path.join(workdir, method, "seed_3", "log.txt")).read()
    assert "Resuming from the checkpoint of step 4" in log, method
  assert "crdoco, no_consistency start from one shared" in table
  # The table's cost: every run's wall time, pretraining and failures too.
  walls = [json.load(open(os.path.join(root, name)))
           ["wall_seconds"] for root, _, names in os.walk(workdir)
           for name in names if name == "run.json"]
  assert len(walls) == 5  # 4 methods x 1 seed + the shared pretraining
  # Every run (the pretraining too) records the code it started from.
  versions = summary["code_versions"]
  assert sum(len(v["runs"]) for v in versions) == 5
  assert "pretraining seed 3" in versions[0]["runs"]
  head = experiments._git(ROOT, "rev-parse", "HEAD")  # None: not a checkout
  assert {v["code"]["commit"] for v in versions} == {head}
  if len(versions) == 1:  # (unless the checkout changed during the test)
    assert f"Code: {experiments.describe_version(versions[0]['code'])}" in table
  assert summary["total_run_seconds"] == pytest.approx(sum(walls))
  assert (f"All runs together: {sum(walls) / 60:.1f} min" in table)
  # The consistency diagnostics: F_T as the run evaluated it, F_S on the
  # translated images, their agreement; none without translators.
  diag = methods["crdoco"]["diagnostics"]
  with open(os.path.join(workdir, "crdoco", "seed_3", "results.json")) as f:
    crdoco_miou = json.load(f)["target_miou"]
  assert diag["f_t_miou"]["mean"] == pytest.approx(crdoco_miou, abs=1e-6)
  assert 0.0 <= diag["f_s_translated_miou"]["mean"] <= 100.0
  assert 0.0 <= diag["agreement"]["mean"] <= 100.0
  # F_S on the source val split: its own domain, not a translation.
  assert 0.0 <= diag["f_s_source_miou"]["mean"] <= 100.0
  assert "F_S(I_S) mIoU, source val" in table
  assert "diagnostics" not in methods["source_only"]
  assert "F_S(G_T->S(I_T)) mIoU" in table
  per_class = methods["crdoco"]["diagnostics_per_class"]
  assert set(per_class) == {"f_t", "f_s_translated"}
  f_t = np.nanmean(list(per_class["f_t"].values()))
  assert f_t == pytest.approx(crdoco_miou, abs=1e-6)
  assert "| crdoco: F_S(G_T->S(I_T)) |" in table
  figure = np.asarray(Image.open(os.path.join(workdir, "figure.png")))
  # 2 target images x 5 panels of 32 x 32 with 2-pixel padding.
  assert figure.shape == (2 * 32 + 3 * 2, 5 * 32 + 6 * 2, 3)

  run_file = os.path.join(workdir, "crdoco", "seed_3", "run.json")
  before = os.stat(run_file).st_mtime_ns
  proc = _run(workdir, "source_only,crdoco", "3", sets, "--figure_images=0")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert os.stat(run_file).st_mtime_ns == before  # not run again
  assert "finished earlier" in proc.stderr


def _folder_domain(root, seed, num_classes=8, size=32, n=4):
  """A folder domain: random images, blocky labels."""
  rng = np.random.default_rng(seed)
  for split in ("train", "val"):
    for sub in ("images", "labels"):
      os.makedirs(os.path.join(root, split, sub))
    for i in range(n):
      label = np.kron(rng.integers(0, num_classes, (4, 4)),
                      np.ones((size // 4, size // 4))).astype(np.uint8)
      image = (rng.integers(0, 256, (size, size, 3)) // 2
               + 16 * label[..., None]).astype(np.uint8)
      Image.fromarray(image).save(os.path.join(root, split, "images",
                                               f"{i}.png"))
      Image.fromarray(label).save(os.path.join(root, split, "labels",
                                               f"{i}.png"))
  return root


def test_runner_on_two_folder_domains(tmp_path):
  source = _folder_domain(str(tmp_path / "a"), 0)
  target = _folder_domain(str(tmp_path / "b"), 1)
  workdir = str(tmp_path / "table")
  proc = _run(workdir, "source_only,oracle", "0", [],
              f"--source_dir={source}", f"--target_dir={target}")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  with open(os.path.join(workdir, "results.json")) as f:
    summary = json.load(f)
  methods = summary["methods"]
  assert methods["source_only"]["gap_closed"] == 0.0
  assert methods["oracle"]["gap_closed"] == 1.0
  with open(os.path.join(workdir, "oracle", "seed_0", "config.json")) as f:
    config = json.load(f)
  assert config["target.name"] == "folder"
  assert config["target.dir"] == target
  # The recorded config, read back typed as the base config.
  from configs import seg  # pylint: disable=g-import-not-at-top
  from crdoco_jax import checkpointing  # pylint: disable=g-import-not-at-top
  restored = checkpointing.read_config(
      os.path.join(workdir, "oracle", "seed_0"), seg.get_config("tiny,oracle"))
  assert restored.target.dir == target and restored.seed == 0
  assert isinstance(restored.target.image_size, tuple)


def test_ideal_view_is_the_val_scenes_in_the_source_style(tiny_config):
  """F_S's view in a translator.ideal_t2s run, on the val split: the
  target val label maps drawn in the source (flat) palette, so a
  nearest-source-colour classifier reads them almost perfectly, and the
  real target images (another palette) poorly."""
  from crdoco_jax import evaluate  # pylint: disable=g-import-not-at-top
  from crdoco_jax.data import demo_seg  # pylint: disable=g-import-not-at-top
  config = tiny_config
  assert config.source.builder_config == "source"
  palette = demo_seg.SOURCE_PALETTE / 127.5 - 1.0
  nearest = lambda x: -np.sum((x[..., None, :] - palette) ** 2, axis=-1)
  ideal = evaluate.mean_iou(experiments.ideal_view_confusion(config,
                                                             nearest))
  c = config.data.num_classes
  real = np.zeros((c, c), np.int64)
  for batch in experiments._val(config, 32):  # pylint: disable=protected-access
    real += np.asarray(evaluate.confusion_matrix(
        nearest(batch["image"][0]).argmax(-1), batch["label"][0], c,
        config.data.ignore_label))
  assert ideal > 0.9 and evaluate.mean_iou(real) < 0.5, (
      ideal, evaluate.mean_iou(real))
  # The runner's table shows the view's score where every seed has it.
  run = dict(result=dict(target_miou=50.0), wall_seconds=1.0, returncode=0,
             diagnostics=dict(f_t_miou=50.0, f_s_translated_miou=40.0,
                              agreement=90.0, f_s_source_miou=70.0,
                              f_s_ideal_miou=100 * ideal,
                              per_class=dict(f_t={"a": 50.0},
                                             f_s_translated={"a": 40.0})))
  table = experiments.markdown(experiments.summarize({"crdoco": {0: run}}),
                               "cmd")
  assert "| F_S(ideal I_T->S) mIoU |" in table
