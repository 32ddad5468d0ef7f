r"""Many short demo-pair trainings in parallel processes on one machine.

  python benchmarks/demo_sweep.py benchmarks/demo_sweep/round2.json OUT [N]

Exploration tool for an accelerator box: runs every entry of the runs file
(``{"name", "config": "demo,METHOD", "overrides": {"a.b": value},
"evals": [steps]}``) as its own process, ``N`` (default 8) at a time, and
writes ``OUT/NAME.log`` (one line per evaluation: step, F_T's target mIoU,
``[F_S(G_T->S(I_T)), F_S(I_T)]`` mIoUs, F_T's per-class IoU) and
``OUT/NAME.json``. Unlike ``crdoco_jax.experiments`` it keeps no checkpoints
and generates the demo pair in memory (the same examples as the tfds
builder), so it also runs where tensorflow-datasets is not installed: the
builder module is then imported against an inert stand-in.
"""
import dataclasses
import json
import os
import subprocess
import sys
import time
import types

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inert_tfds() -> None:
  """Registers a do-nothing ``tensorflow_datasets`` so that importing the
  demo builder module works without tfds (only its numpy generator runs)."""

  class _Inert:
    def __init__(self, *args, **kwargs):
      pass

    def __init_subclass__(cls, **kwargs):
      pass

    def __call__(self, *args, **kwargs):
      return _Inert()

    def __getattr__(self, name):
      return _Inert()

  @dataclasses.dataclass(eq=False)
  class _BuilderConfig:
    name: str = ""
    description: str = ""

  module = types.ModuleType("tensorflow_datasets")
  module.core = types.SimpleNamespace(
      BuilderConfig=_BuilderConfig, GeneratorBasedBuilder=_Inert,
      Version=_Inert, DatasetInfo=_Inert)
  module.features = module.download = _Inert()
  module.list_builders = lambda *args, **kwargs: []
  sys.modules["tensorflow_datasets"] = module


def _configure(config, overrides) -> None:
  with config.unlocked():
    for dotted, value in overrides.items():
      *parents, leaf = dotted.split(".")
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value


def child(run, outdir):
  """Trains one entry and evaluates F_T (and F_S on I_T->S) on target val."""
  sys.path.insert(0, _ROOT)
  try:
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    _inert_tfds()
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import seg
  from crdoco_jax import evaluate, parallel, state as state_lib
  from crdoco_jax import train_step as step_lib
  from crdoco_jax.data import demo_seg, input_pipeline
  from crdoco_jax.models import build_networks
  # pylint: enable=g-import-not-at-top
  cache = {}

  def open_source(domain, split, *args, **kwargs):
    del args, kwargs
    key = (domain.builder_config, split)
    if key not in cache:
      cache[key] = [demo_seg.make_example(domain.builder_config, split, i)
                    for i in range(demo_seg.SPLIT_SIZES[split])]
    return cache[key]
  input_pipeline.open_source = open_source

  config = seg.get_config(run["config"])
  _configure(config, run.get("overrides", {}))
  jax.config.update("jax_threefry_partitionable",
                    config.compute.threefry_partitionable)
  t0 = time.time()
  state = parallel.replicate(state_lib.create_train_state(
      config, build_networks(config), jax.random.PRNGKey(config.seed)))
  nets = build_networks(config, bn_axis_name=parallel.AXIS)
  pmap = lambda f, **kw: jax.pmap(f, axis_name=parallel.AXIS, **kw)
  pretrain = config.translator.pretrain_steps
  phases = (["translator"] if pretrain > 0 else []) + ["adapt"]
  p_train = {p: pmap(step_lib.make_train_step(config, nets, p),
                     donate_argnums=(0,)) for p in phases}
  num_classes = config.data.num_classes

  def confusions(st, batch):
    variables = {"params": st.task.params, "batch_stats": st.task.batch_stats}
    predict = lambda x, domain: jnp.argmax(
        nets.task.apply(variables, x, domain, train=False)["main"], -1)
    cm = lambda x, domain: evaluate.confusion_matrix(
        predict(x, domain), batch["label"], num_classes,
        config.data.ignore_label)
    x = batch["image"]
    cms = [cm(x, "T")]
    if st.translator is not None:
      x_ts = nets.translator.apply({"params": st.translator.params}, x, "T2S")
      cms += [cm(x_ts, "S"), cm(x, "S")]
    return jax.lax.psum(jnp.stack(cms), parallel.AXIS)
  p_confusions = pmap(confusions)

  out = dict(name=run["name"], config=run["config"],
             overrides=run.get("overrides", {}), evals=[], losses=[])
  evals = set(run.get("evals", [config.train.num_steps]))
  batches = input_pipeline.TrainBatches(config).iterate(0)
  window = []
  for step in range(config.train.num_steps):
    phase = "translator" if step < pretrain else "adapt"
    state, metrics = p_train[phase](state, next(batches))
    window.append(metrics)
    if (step + 1) % 100 == 0:
      window = jax.device_get(window)
      out["losses"].append(dict(step=step + 1, **{
          k: float(np.mean([m[k] for m in window])) for k in window[-1]}))
      window = []
    if step + 1 in evals:
      cm = sum(np.asarray(p_confusions(state, b)[0], np.int64)
               for b in input_pipeline.eval_batches(config))
      ious = [round(100 * float(v), 1) for v in evaluate.iou_from_confusion(
          cm[0])]
      others = [round(100 * evaluate.mean_iou(c), 2) for c in cm[1:]]
      out["evals"].append(dict(step=step + 1,
                               miou=100 * evaluate.mean_iou(cm[0]),
                               source_net_mious=others, ious=ious))
      print(run["name"], step + 1, round(out["evals"][-1]["miou"], 2),
            others, ious, flush=True)
  out["seconds"] = time.time() - t0
  with open(os.path.join(outdir, run["name"] + ".json"), "w") as f:
    json.dump(out, f, indent=1)


def main(argv):
  if len(argv) < 3:
    sys.exit(__doc__)
  with open(argv[1]) as f:
    runs = json.load(f)
  outdir, parallel_runs = argv[2], int(argv[3]) if len(argv) > 3 else 8
  os.makedirs(outdir, exist_ok=True)
  # Several processes share one accelerator: no up-front memory grab.
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
             TF_CPP_MIN_LOG_LEVEL="2")
  running, pending = [], list(runs)
  while pending or running:
    while pending and len(running) < parallel_runs:
      run = pending.pop(0)
      log = open(os.path.join(outdir, run["name"] + ".log"), "w")
      running.append(subprocess.Popen(
          [sys.executable, os.path.abspath(__file__), "--child",
           json.dumps(run), outdir],
          env=env, stdout=log, stderr=subprocess.STDOUT))
    time.sleep(2)
    running = [p for p in running if p.poll() is None]


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    child(json.loads(sys.argv[2]), sys.argv[3])
  else:
    main(sys.argv)
