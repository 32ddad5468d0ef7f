r"""PyTorch checkpoints -> this project's Flax variables, and a CLI to save
them (Orbax) for ``config.init`` (see ``crdoco_jax/pretrained.py``).

  python -m crdoco_jax.convert --kind=deeplab_v2 \
      --input=DeepLab_resnet_pretrained_init-f81d91e8.pth --output=/ckpt/f_init
  python -m crdoco_jax.convert --kind=cyclegan_generator \
      --input=gta2cs/latest_net_G_A.pth --output=/ckpt/g_s2t

Kinds (``--kind``), each one network:

* ``deeplab_v2``: Caffe-style DeepLab-v2 ResNet as AdaptSegNet / ADVENT
  publish it (``Res_Deeplab`` / ``ResNetMulti``: ``conv1``, ``bn1``,
  ``layer1..4``, ``layer5`` / ``layer6`` = ``Classifier_Module`` with
  ``conv2d_list.{0..3}``; optional ``module.`` / ``Scale.`` prefixes). The
  stride sits on each block's first 1x1 conv, as in our DeepLab. A head
  whose input is layer4 becomes the main head, one on layer3 the auxiliary
  head. Caffe-style ImageNet ResNets (no heads) convert too.
* ``torchvision_resnet``: torchvision ResNet-18/34/50/101 ImageNet weights.
  Their bottlenecks stride on the 3x3 conv: train with
  ``--config.task_net.stride_on_3x3=True`` (checked when loading). ``fc``
  (the ImageNet classifier) is dropped; the heads keep their random init.
* ``cyclegan_generator``: the CycleGAN repository's ``ResnetGenerator``
  (``model.N`` sequential indices, instance norm, with or without dropout).
* ``cyclegan_discriminator``: its ``NLayerDiscriminator`` (instance norm).

The conversion functions take state dicts of NumPy arrays (no torch
needed); only the CLI imports torch. Every key is accounted for: missing
and unexpected keys and shape mismatches are errors naming them, except
``num_batches_tracked`` (BatchNorm's step counter, which we do not keep),
``fc.*`` and the running statistics of CycleGAN's parameter-free instance
norms (old PyTorch versions saved them; CycleGAN itself drops them).

Input normalisation. Our networks take RGB in [-1, 1]. ``input_norm``
folds the source's normalisation into the first conv and its BatchNorm:
``caffe_bgr`` (AdaptSegNet: BGR, 0..255 minus the Caffe mean),
``imagenet_rgb`` (torchvision: RGB in [0, 1], ImageNet mean / std) or
``none``. The fold is exact except within the stem conv's 3-pixel zero
padding (zeros there are mid-grey for us, the mean colour for the source).
"""
import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import traverse_util

from crdoco_jax.models import PatchGAN, ResnetGenerator, TaskNetPair
from crdoco_jax.models import deeplab

KINDS = ("deeplab_v2", "torchvision_resnet", "cyclegan_generator",
         "cyclegan_discriminator")
TASK_KINDS = KINDS[:2]
INPUT_NORMS = ("caffe_bgr", "imagenet_rgb", "none")
DEFAULT_INPUT_NORM = dict(deeplab_v2="caffe_bgr",
                          torchvision_resnet="imagenet_rgb",
                          cyclegan_generator="none",
                          cyclegan_discriminator="none")
# AdaptSegNet's IMG_MEAN (BGR, 0..255) and torchvision's ImageNet statistics.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TORCH_LEAF = dict(kernel="weight", scale="weight", bias="bias",
                   mean="running_mean", var="running_var")
_INIT_SIZE = 64
Variables = Dict[str, Any]


class ConversionError(ValueError):
  """A checkpoint does not fit the architecture it is converted into."""


# ----------------------------------------------------------------- tensors


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """Conv2d weight ``[O, I, kh, kw]`` -> Flax ``[kh, kw, I, O]``."""
  return np.transpose(w, (2, 3, 1, 0))


def conv_transpose_kernel(w: np.ndarray) -> np.ndarray:
  """ConvTranspose2d weight ``[I, O, kh, kw]`` -> Flax ``nn.ConvTranspose``
  ``[kh, kw, I, O]``. PyTorch's transposed conv correlates the dilated
  input with the spatially flipped kernel; Flax's (transpose_kernel=False)
  with the kernel as given, hence the flip."""
  return np.transpose(w, (2, 3, 0, 1))[::-1, ::-1]


def input_affine(input_norm: str) -> Tuple[np.ndarray, np.ndarray,
                                           np.ndarray]:
  """``(order, a, b)``: the source network's input channel ``j`` is
  ``a[j] * x[order[j]] + b[j]`` for our RGB image ``x`` in [-1, 1]."""
  if input_norm == "caffe_bgr":  # pixel = 127.5 x + 127.5, BGR, minus mean
    return (np.array([2, 1, 0]), np.full(3, 127.5),
            127.5 - np.asarray(CAFFE_MEAN_BGR))
  if input_norm == "imagenet_rgb":  # (0.5 x + 0.5 - mean) / std
    std = np.asarray(IMAGENET_STD)
    return (np.arange(3), 0.5 / std, (0.5 - np.asarray(IMAGENET_MEAN)) / std)
  if input_norm == "none":
    return np.arange(3), np.ones(3), np.zeros(3)
  raise ConversionError(f"input_norm={input_norm!r} is not one of "
                        f"{INPUT_NORMS}.")


def fold_input_norm(kernel: np.ndarray, bn_mean: np.ndarray,
                    input_norm: str) -> Tuple[np.ndarray, np.ndarray]:
  """Folds the source's input normalisation into a bias-free first conv
  (``kernel`` ``[kh, kw, 3, O]``) followed by BatchNorm (running mean
  ``[O]``): returns the new kernel and running mean. In training mode the
  batch mean absorbs the constant shift by itself."""
  order, a, b = input_affine(input_norm)
  new = np.zeros_like(kernel)
  new[:, :, order] = kernel * a[None, None, :, None]
  shift = np.einsum("hwio,i->o", kernel.astype(np.float64), b)
  return new, (bn_mean - shift).astype(bn_mean.dtype)


# ------------------------------------------------------------ the engine


def strip_prefixes(state_dict: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Drops ``module.`` (DataParallel) and ``Scale.`` (DeepLab's multi-scale
  wrapper) prefixes; values become float32 NumPy arrays."""
  out = {}
  for key, value in state_dict.items():
    short = re.sub(r"^(module\.|Scale\.)+", "", key)
    if short in out:
      raise ConversionError(f"Keys {key!r} and another one both map to "
                            f"{short!r} after dropping prefixes.")
    out[short] = np.asarray(value)
  return out


def _abstract(module, *args) -> Dict[Tuple[str, ...], Any]:
  """Flat ``{(collection, *path): ShapeDtypeStruct}`` of a module's
  variables."""
  image = jnp.zeros((1, _INIT_SIZE, _INIT_SIZE, 3), jnp.float32)
  tree = jax.eval_shape(lambda rng: module.init(rng, image, *args),
                        jax.random.PRNGKey(0))
  return traverse_util.flatten_dict(tree)


def _fill(state_dict: Dict[str, np.ndarray],
          expected: Dict[Tuple[str, ...], Any],
          torch_key: Callable[[Tuple[str, ...]], Tuple[str, Callable]],
          ignore: Callable[[str], bool], what: str) -> Variables:
  """Takes every expected Flax leaf from ``state_dict[torch_key(path)]``;
  one error lists every missing, unexpected or mis-shaped key."""
  flat, missing, shapes, used = {}, [], [], set()
  for path, spec in expected.items():
    key, transform = torch_key(path)
    if key not in state_dict:
      missing.append(key)
      continue
    used.add(key)
    value = np.asarray(transform(state_dict[key].astype(np.float32)))
    if value.shape != tuple(spec.shape):
      shapes.append(f"{key}: torch shape {tuple(state_dict[key].shape)} -> "
                    f"{'/'.join(path)} needs {tuple(spec.shape)}, got "
                    f"{value.shape}")
    flat[path] = np.ascontiguousarray(value, np.float32)
  unexpected = sorted(k for k in state_dict if k not in used and not ignore(k))
  problems = []
  for title, items in (("missing keys", missing),
                       ("unexpected keys", unexpected),
                       ("shape mismatches", shapes)):
    if items:
      listed = "\n    ".join(items[:20])
      more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
      problems.append(f"  {len(items)} {title}:\n    {listed}{more}")
  if problems:
    hint = ""
    if any(re.match(r"model\.\d+\.running_mean$", k) for k in unexpected):
      hint = ("\n  (Parameters in norm layers: this checkpoint was trained "
              "with --norm batch; ours use parameter-free instance norm as "
              "CycleGAN's default --norm instance.)")
    raise ConversionError(f"Cannot convert the checkpoint into {what}:\n"
                          + "\n".join(problems) + hint)
  return traverse_util.unflatten_dict(flat)


def _module_leaf(module: str, leaf: str, conv=conv_kernel):
  return f"{module}.{_TORCH_LEAF[leaf]}", conv if leaf == "kernel" else (
      lambda x: x)


def _is_bookkeeping(key: str) -> bool:
  return key.endswith("num_batches_tracked")


# ---------------------------------------------------------- task networks


def _layer_blocks(sd: Dict[str, np.ndarray], i: int) -> int:
  return len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")})


def _resnet_arch(sd: Dict[str, np.ndarray]) -> Tuple[str, int]:
  """``(arch, width)`` of our DeepLab matching the checkpoint's blocks."""
  if "conv1.weight" not in sd:
    raise ConversionError(
        "No 'conv1.weight': not a ResNet state dict (first keys: "
        f"{sorted(sd)[:5]}).")
  block = deeplab.Bottleneck if "layer1.0.conv3.weight" in sd else (
      deeplab.BasicBlock)
  counts = tuple(_layer_blocks(sd, i) for i in range(1, 5))
  for arch, (arch_block, arch_counts) in deeplab.ARCHS.items():
    if arch_block is block and tuple(arch_counts) == counts:
      return arch, int(sd["conv1.weight"].shape[0])
  raise ConversionError(
      f"A ResNet with {block.__name__} blocks {counts} per layer matches no "
      f"task_net.arch of ours: {sorted(deeplab.ARCHS)}.")


def _heads(sd: Dict[str, np.ndarray], arch: str, width: int
           ) -> Dict[str, str]:
  """Our head name -> the torch module (``layer5`` / ``layer6``) holding it,
  told apart by their input channels (layer3's or layer4's)."""
  block, _ = deeplab.ARCHS[arch]
  channels = {i: deeplab.LAYER_SPECS[i - 1][0] * width // 64
              * block.expansion for i in (3, 4)}
  heads = {}
  for module in ("layer5", "layer6"):
    key = f"{module}.conv2d_list.0.weight"
    if key not in sd:
      continue
    in_channels = sd[key].shape[1]
    head = {channels[4]: "main", channels[3]: "aux"}.get(in_channels)
    if head is None or head in heads:
      raise ConversionError(
          f"{key} has {in_channels} input channels; expected layer4's "
          f"{channels[4]} (main head) or layer3's {channels[3]} (aux head), "
          "one head each.")
    heads[head] = module
  if heads and "main" not in heads:
    raise ConversionError("The checkpoint has an auxiliary (layer3) head but "
                          "no main (layer4) head.")
  return heads


def _task_torch_key(path: Tuple[str, ...], head_modules: Dict[str, str]):
  _, unit, *rest = path
  leaf = rest[-1]
  if unit == "stem":
    module = "conv1" if rest[0] == "Conv_0" else "bn1"
  elif unit == "heads":
    head, conv = rest[0], rest[1]
    module = f"{head_modules[head]}.conv2d_list.{conv.split('_')[1]}"
  else:  # layerN / <Block>_M / Conv_k | BatchNorm_k | downsample_*
    block, sub = rest[0].split("_")[1], rest[1]
    if sub.startswith("downsample_"):
      module = "downsample.0" if sub == "downsample_conv" else "downsample.1"
    else:
      name, index = sub.split("_")
      module = f"{'conv' if name == 'Conv' else 'bn'}{int(index) + 1}"
    module = f"{unit}.{block}.{module}"
  return _module_leaf(module, leaf)


def convert_task_net(state_dict: Mapping[str, Any], kind: str,
                     input_norm: Optional[str] = None, aspp: str = "all",
                     heads: bool = True) -> Tuple[Variables, Dict[str, Any]]:
  """A DeepLab-v2 / ImageNet ResNet state dict -> ``({'params',
  'batch_stats'}, info)`` of ONE task net, keyed by unit (``stem``,
  ``layer1``..``layer4``, and ``heads`` when the checkpoint has them).

  Args:
    state_dict: ``{torch key: array}`` (``kind`` in ``TASK_KINDS``).
    input_norm: see the module doc; None = the kind's default.
    aspp: ``all`` sums the four ASPP branches (DeepLab-v2, ADVENT, CrDoCo);
      ``first2`` zeroes branches 3-4, reproducing AdaptSegNet's published
      ``Classifier_Module``, whose forward returns inside its loop after
      adding the second branch (its models were trained that way).
    heads: False drops the checkpoint's heads (e.g. 21 COCO classes).
  """
  if kind not in TASK_KINDS:
    raise ConversionError(f"kind={kind!r} is not a task-net kind "
                          f"{TASK_KINDS}.")
  if aspp not in ("all", "first2"):
    raise ConversionError(f"aspp={aspp!r}: expected 'all' or 'first2'.")
  input_norm = input_norm or DEFAULT_INPUT_NORM[kind]
  sd = strip_prefixes(state_dict)
  arch, width = _resnet_arch(sd)
  head_modules = _heads(sd, arch, width) if heads else {}
  num_classes = (int(sd[f"{head_modules['main']}.conv2d_list.0.weight"]
                     .shape[0]) if head_modules else None)
  stride_on_3x3 = kind == "torchvision_resnet"
  net = TaskNetPair(arch, num_classes or 1, "aux" in head_modules,
                    width=width, stride_on_3x3=stride_on_3x3)
  # One network: the F_T units, without their domain suffix.
  expected = {(p[0], p[1][:-2]) + p[2:]: s
              for p, s in _abstract(net, "T").items() if p[1].endswith("_T")}
  if not head_modules:
    expected = {p: s for p, s in expected.items() if p[1] != "heads"}
  dropped = lambda k: (k.startswith("fc.")
                       or (not heads and k.startswith(("layer5.", "layer6."))))
  variables = _fill(sd, expected,
                    lambda p: _task_torch_key(p, head_modules),
                    lambda k: _is_bookkeeping(k) or dropped(k),
                    f"a {arch} DeepLab-v2 (width {width})")
  stem = variables["params"]["stem"]["Conv_0"]
  stem["kernel"], bn_mean = fold_input_norm(
      stem["kernel"], variables["batch_stats"]["stem"]["BatchNorm_0"]["mean"],
      input_norm)
  variables["batch_stats"]["stem"]["BatchNorm_0"]["mean"] = bn_mean
  if aspp == "first2" and head_modules:
    for head in variables["params"]["heads"].values():
      for conv in ("Conv_2", "Conv_3"):
        head[conv] = {k: np.zeros_like(v) for k, v in head[conv].items()}
  skipped = sorted({k.split(".")[0] for k in sd if dropped(k)})
  if skipped:
    logging.info("Dropped the checkpoint's %s (heads keep their random "
                 "initialisation).", ", ".join(skipped))
  info = dict(kind=kind, arch=arch, width=width, num_classes=num_classes,
              heads=sorted(head_modules), stride_on_3x3=stride_on_3x3,
              input_norm=input_norm, aspp=aspp)
  return variables, info


# -------------------------------------------------------------- CycleGAN


def _sequential_indices(sd: Dict[str, np.ndarray]) -> Dict[int, set]:
  """``{N: leaf names}`` of a ``model.N.*`` state dict."""
  out = {}
  for key in sd:
    m = re.match(r"model\.(\d+)\.(.+)$", key)
    if not m:
      raise ConversionError(f"Key {key!r} is not of the CycleGAN form "
                            "'model.N....'.")
    out.setdefault(int(m.group(1)), set()).add(m.group(2))
  return out


def _instance_norm_stats(sd: Dict[str, np.ndarray]) -> Callable[[str], bool]:
  """Running statistics of modules without weights: parameter-free instance
  norms, which CycleGAN never uses (its loader deletes them)."""
  def ignore(key):
    module, _, leaf = key.rpartition(".")
    return _is_bookkeeping(key) or (
        leaf in ("running_mean", "running_var")
        and f"{module}.weight" not in sd)
  return ignore


def convert_cyclegan_generator(state_dict: Mapping[str, Any]
                               ) -> Tuple[Variables, Dict[str, Any]]:
  """CycleGAN ``ResnetGenerator`` -> ``({'params'}, info)`` of our
  ``ResnetGenerator`` (all residual blocks in the decoder; see
  ``pretrained.split_generator`` for other ``encoder_blocks``)."""
  sd = strip_prefixes(state_dict)
  indices = _sequential_indices(sd)
  blocks = sorted(i for i, leaves in indices.items()
                  if any(l.startswith("conv_block.") for l in leaves))
  if "model.1.weight" not in sd or not blocks:
    raise ConversionError("Not a CycleGAN ResnetGenerator: expected "
                          "'model.1.weight' and 'model.N.conv_block.*' keys.")
  n = len(blocks)
  ngf = int(sd["model.1.weight"].shape[0])
  # conv_block = [pad, conv, norm, relu, (dropout,) pad, conv, norm]
  second = 6 if f"model.{blocks[0]}.conv_block.6.weight" in sd else 5
  stem = {"Conv_0": 1, "Conv_1": 4, "Conv_2": 7}
  head = {"ConvTranspose_0": 10 + n, "ConvTranspose_1": 13 + n,
          "Conv_0": 17 + n}

  def torch_key(path):
    _, part, *rest = path
    leaf = rest[-1]
    if rest[0].startswith("ResidualBlock_"):
      b = int(rest[0].split("_")[1])
      sub = 1 if rest[1] == "Conv_0" else second
      return _module_leaf(f"model.{10 + b}.conv_block.{sub}", leaf)
    index = (stem if part == "encoder" else head)[rest[0]]
    conv = (conv_transpose_kernel if rest[0].startswith("ConvTranspose")
            else conv_kernel)
    return _module_leaf(f"model.{index}", leaf, conv)

  expected = _abstract(ResnetGenerator(ngf, n))
  variables = _fill(sd, expected, torch_key, _instance_norm_stats(sd),
                    f"a ResnetGenerator (ngf {ngf}, {n} blocks)")
  return variables, dict(kind="cyclegan_generator", ngf=ngf, n_blocks=n)


def convert_cyclegan_discriminator(state_dict: Mapping[str, Any]
                                   ) -> Tuple[Variables, Dict[str, Any]]:
  """CycleGAN ``NLayerDiscriminator`` -> ``({'params'}, info)`` of our
  ``PatchGAN``."""
  sd = strip_prefixes(state_dict)
  convs = sorted(i for i in _sequential_indices(sd)
                 if f"model.{i}.weight" in sd and sd[f"model.{i}.weight"].ndim
                 == 4)
  if "model.0.weight" not in sd or len(convs) < 2:
    raise ConversionError("Not a CycleGAN NLayerDiscriminator: expected "
                          "'model.0.weight' and further 4-D conv weights.")
  n_layers = len(convs) - 2
  ndf = int(sd["model.0.weight"].shape[0])

  def torch_key(path):
    k = int(path[1].split("_")[1])
    # [conv, lrelu] then n_layers x [conv, norm, lrelu], then the last conv.
    return _module_leaf(f"model.{0 if k == 0 else 3 * k - 1}", path[-1])

  expected = _abstract(PatchGAN(ndf, n_layers))
  variables = _fill(sd, expected, torch_key, _instance_norm_stats(sd),
                    f"a PatchGAN (ndf {ndf}, {n_layers} layers)")
  return variables, dict(kind="cyclegan_discriminator", ndf=ndf,
                         n_layers=n_layers)


def convert(state_dict: Mapping[str, Any], kind: str, **kwargs
            ) -> Tuple[Variables, Dict[str, Any]]:
  """Dispatches on ``kind`` (one of ``KINDS``)."""
  if kind in TASK_KINDS:
    return convert_task_net(state_dict, kind, **kwargs)
  if kwargs:
    raise ConversionError(f"Options {sorted(kwargs)} apply to task nets "
                          f"only, not kind={kind!r}.")
  if kind == "cyclegan_generator":
    return convert_cyclegan_generator(state_dict)
  if kind == "cyclegan_discriminator":
    return convert_cyclegan_discriminator(state_dict)
  raise ConversionError(f"kind={kind!r} is not one of {KINDS}.")


# ------------------------------------------------------------------- CLI


def load_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
  """A ``.pth`` state dict as NumPy arrays (torch on the CPU, tensors
  only). A ``{'state_dict': ...}`` wrapper is unwrapped."""
  import torch  # pylint: disable=g-import-not-at-top
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state "
                          "dict; save model.state_dict() instead.")
  return {k: v.detach().cpu().float().numpy() for k, v in obj.items()
          if torch.is_tensor(v)}


def _define_flags():
  flags.DEFINE_enum("kind", None, list(KINDS), "Source architecture.")
  flags.DEFINE_string("input", None, "PyTorch .pth file.")
  flags.DEFINE_string("output", None, "New Orbax directory.")
  flags.DEFINE_enum(
      "input_norm", None, list(INPUT_NORMS),
      "Task nets: the checkpoint's input normalisation, folded into the "
      "stem (default caffe_bgr for deeplab_v2, imagenet_rgb for "
      "torchvision_resnet).")
  flags.DEFINE_enum(
      "aspp", "all", ["all", "first2"],
      "deeplab_v2: 'first2' reproduces AdaptSegNet's published heads, which "
      "sum only their first two ASPP branches.")
  flags.DEFINE_bool(
      "skip_heads", False, "Task nets: drop layer5/layer6 (e.g. the "
      "21-class COCO heads of DeepLab_resnet_pretrained_init).")
  flags.mark_flags_as_required(["kind", "input", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from crdoco_jax import pretrained  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  kwargs = {}
  if f.kind in TASK_KINDS:
    kwargs = dict(input_norm=f.input_norm, aspp=f.aspp,
                  heads=not f.skip_heads)
  variables, info = convert(load_torch_state_dict(f.input), f.kind, **kwargs)
  info["source"] = f.input
  pretrained.save(f.output, variables, info)
  print(f"Wrote {f.output}: {info}")


if __name__ == "__main__":
  # Flags are defined here only, so that importing this module defines none.
  _define_flags()
  app.run(main)
