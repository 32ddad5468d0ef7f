"""PyTorch -> Flax converters: tiny PyTorch networks of each source layout,
randomly initialised (BatchNorm statistics too), give the Flax outputs of
their converted weights (f32, eval mode), and bad checkpoints give errors
naming the keys."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import seg
from crdoco_jax import convert, pretrained
from crdoco_jax.models import (PatchGAN, ResnetGenerator, TaskNetPair,
                               build_networks)
from tests import torch_models as tm

TOL = 1e-4
SIZE = 32


def _image(seed=0, n=2, size=SIZE):
  return np.random.RandomState(seed).uniform(-1, 1, (n, size, size, 3)
                                             ).astype(np.float32)


def _torch(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _numpy(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _upsampled(t, size=SIZE):
  """The heads' logits upsampled as our DeepLab does (align_corners)."""
  return _numpy(torch.nn.functional.interpolate(
      t, size=(size, size), mode="bilinear", align_corners=True))


def _task_config(arch, width, num_classes, multi_level, domains="ST",
                 stride_on_3x3=False):
  config = seg.get_config("tiny")
  config.task_net.update(arch=arch, width=width, multi_level=multi_level,
                         stride_on_3x3=stride_on_3x3)
  config.data.num_classes = num_classes
  config.init.task_net_domains = domains
  return config


def _load_pair(config, variables, info, path):
  """F_S / F_T variables of a fresh TaskNetPair with the converted file."""
  pretrained.save(path, variables, info)
  net = build_networks(config).task
  # Zeros stand in for the random init (an eager init of both nets is slow).
  fresh = jax.tree_util.tree_map(
      lambda s: np.zeros(s.shape, s.dtype),
      jax.eval_shape(lambda: net.init(jax.random.PRNGKey(1),
                                      jnp.zeros((1, SIZE, SIZE, 3)))))
  params, stats = pretrained.load_task_net(config, fresh["params"],
                                           fresh["batch_stats"], path)
  return net, {"params": params, "batch_stats": stats}, fresh


@pytest.mark.parametrize("first2", [False, True])
def test_adaptsegnet_multi_level(tmp_path, first2):
  model = tm.randomize(tm.DeepLab(tm.Bottleneck, (3, 4, 6, 3), 8, 5,
                                  multi_level=True, first2=first2), 0)
  x = _image()
  with torch.no_grad():
    ref = model(_torch(x))
  # AdaptSegNet's DataParallel snapshots prefix every key with 'module.'.
  variables, info = convert.convert(
      tm.state_dict(model, "module."), "deeplab_v2", input_norm="none",
      aspp="first2" if first2 else "all")
  assert info["arch"] == "resnet50" and info["heads"] == ["aux", "main"]
  config = _task_config("resnet50", 8, 5, True)
  net, v, _ = _load_pair(config, variables, info, str(tmp_path / "f"))
  for domain in "ST":
    out = net.apply(v, x, domain)
    for head in ("main", "aux"):
      np.testing.assert_array_less(
          np.abs(np.asarray(out[head]) - _upsampled(ref[head])).max(), TOL)


def test_single_level_into_multi_level_keeps_aux_random(tmp_path):
  model = tm.randomize(tm.DeepLab(tm.BasicBlock, (1, 1, 1, 1), 8, 4), 1)
  x = _image(1)
  with torch.no_grad():
    ref = model(_torch(x))
  variables, info = convert.convert(tm.state_dict(model), "deeplab_v2",
                                    input_norm="none")
  assert info["heads"] == ["main"]
  config = _task_config("resnet10", 8, 4, True, domains="T")
  net, v, fresh = _load_pair(config, variables, info, str(tmp_path / "f"))
  out = net.apply(v, x, "T")
  np.testing.assert_array_less(
      np.abs(np.asarray(out["main"]) - _upsampled(ref["main"])).max(), TOL)
  # Untouched (still zeros): F_S entirely, and F_T's auxiliary head.
  for a, b in ((v["params"]["stem_S"], fresh["params"]["stem_S"]),
               (v["params"]["heads_T"]["aux"],
                fresh["params"]["heads_T"]["aux"])):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(v["params"]["stem_T"]["Conv_0"]["kernel"],
                            fresh["params"]["stem_T"]["Conv_0"]["kernel"])


def test_torchvision_bottleneck_needs_stride_on_3x3(tmp_path):
  model = tm.randomize(tm.DeepLab(tm.Bottleneck, (3, 4, 6, 3), 8,
                                  stride_on_3x3=True, imagenet_fc=True), 2)
  x = _image(2)
  with torch.no_grad():
    ref = _numpy(model(_torch(x))["feat4"])
  variables, info = convert.convert(tm.state_dict(model),
                                    "torchvision_resnet", input_norm="none")
  assert info["stride_on_3x3"] and info["heads"] == []
  config = _task_config("resnet50", 8, 5, True, stride_on_3x3=True)
  net, v, _ = _load_pair(config, variables, info, str(tmp_path / "f"))
  _, inter = net.apply(v, x, "T", capture_intermediates=True)
  feat4 = np.asarray(inter["intermediates"]["layer4_T"]["__call__"][0])
  np.testing.assert_array_less(np.abs(feat4 - ref).max(), TOL)
  # The same weights in a Caffe-style model compute something else, and
  # loading them there is refused.
  caffe = TaskNetPair("resnet50", 5, True, width=8)
  _, inter = caffe.apply(v, x, "T", capture_intermediates=True)
  assert np.abs(np.asarray(inter["intermediates"]["layer4_T"]["__call__"][0])
                - ref).max() > 1e-2
  with pytest.raises(ValueError, match="task_net.stride_on_3x3=True"):
    _load_pair(_task_config("resnet50", 8, 5, True), variables, info,
               str(tmp_path / "g"))


@pytest.mark.parametrize("input_norm", ["caffe_bgr", "imagenet_rgb"])
def test_input_norm_folds_into_stem(input_norm):
  """Away from the zero padding, conv + BN of the source's normalised input
  equals conv + BN of ours with the folded weights (pad 0 here)."""
  rng = np.random.RandomState(3)
  kernel = rng.normal(0, 0.1, (7, 7, 3, 6)).astype(np.float32)
  mean, var = rng.normal(0, 1, 6), rng.uniform(0.5, 1.5, 6)
  x = _image(3, 1, 20)
  order, a, b = convert.input_affine(input_norm)
  source_x = a * x[..., order] + b
  if input_norm == "caffe_bgr":  # a BGR image, 0..255, minus the mean
    pixels = (x + 1) * 127.5
    np.testing.assert_allclose(
        source_x, pixels[..., ::-1] - np.array(convert.CAFFE_MEAN_BGR),
        atol=1e-3)
  conv = lambda img, k: jax.lax.conv_general_dilated(
      img, k, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision="highest")
  new_kernel, new_mean = convert.fold_input_norm(kernel, mean, input_norm)
  ref = (conv(source_x.astype(np.float32), kernel) - mean) / np.sqrt(var)
  out = (conv(x, new_kernel.astype(np.float32)) - new_mean) / np.sqrt(var)
  np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("dropout", [False, True])
def test_cyclegan_generator(dropout):
  model = tm.randomize(tm.ResnetGenerator(4, 2, dropout), 4)
  x = _image(4, size=16)
  with torch.no_grad():
    ref = _numpy(model(_torch(x)))
  variables, info = convert.convert(tm.state_dict(model),
                                    "cyclegan_generator")
  assert info == dict(kind="cyclegan_generator", ngf=4, n_blocks=2)
  out = ResnetGenerator(4, 2).apply(variables, x)
  np.testing.assert_array_less(np.abs(np.asarray(out) - ref).max(), TOL)
  # Another encoder / decoder split of the same blocks computes the same.
  split = {"params": pretrained.split_generator(variables["params"], 1)}
  out = ResnetGenerator(4, 2, encoder_blocks=1).apply(split, x)
  np.testing.assert_array_less(np.abs(np.asarray(out) - ref).max(), TOL)


def test_cyclegan_discriminator():
  model = tm.randomize(tm.NLayerDiscriminator(4, 3), 5)
  x = _image(5)
  with torch.no_grad():
    ref = _numpy(model(_torch(x)))
  variables, info = convert.convert(tm.state_dict(model),
                                    "cyclegan_discriminator")
  assert info["n_layers"] == 3 and info["ndf"] == 4
  out = PatchGAN(4, 3).apply(variables, x)
  assert out.shape == ref.shape == (2, 2, 2, 1)
  np.testing.assert_array_less(np.abs(np.asarray(out) - ref).max(), TOL)


def test_errors_name_keys_and_shapes(tmp_path):
  sd = tm.state_dict(tm.DeepLab(tm.BasicBlock, (1, 1, 1, 1), 8, 4))
  missing = {k: v for k, v in sd.items() if k != "layer2.0.bn1.running_var"}
  with pytest.raises(convert.ConversionError,
                     match=r"1 missing keys:\s+layer2.0.bn1.running_var"):
    convert.convert(missing, "deeplab_v2")
  extra = dict(sd, **{"layer9.weight": np.zeros(3, np.float32)})
  with pytest.raises(convert.ConversionError,
                     match=r"1 unexpected keys:\s+layer9.weight"):
    convert.convert(extra, "deeplab_v2")
  bad = dict(sd, **{"layer1.0.conv2.weight": np.zeros((8, 8, 1, 1),
                                                      np.float32)})
  with pytest.raises(convert.ConversionError,
                     match=r"layer1.0.conv2.weight: torch shape \(8, 8, 1, 1\)"
                     r".*needs \(3, 3, 8, 8\), got \(1, 1, 8, 8\)"):
    convert.convert(bad, "deeplab_v2")
  # A BatchNorm CycleGAN (pix2pix --norm batch) cannot map onto ours.
  d = tm.NLayerDiscriminator(4, 3)
  d.model[3] = torch.nn.BatchNorm2d(8)
  with pytest.raises(convert.ConversionError, match="--norm batch"):
    convert.convert(tm.state_dict(d), "cyclegan_discriminator")
  # Loading into a config with other shapes names both shapes.
  variables, info = convert.convert(sd, "deeplab_v2")
  with pytest.raises(ValueError, match=r"heads/main/Conv_0/kernel: file "
                     r"\(3, 3, 64, 4\), model \(3, 3, 64, 7\)"):
    _load_pair(_task_config("resnet10", 8, 7, False), variables, info,
               str(tmp_path / "f"))
  with pytest.raises(ValueError, match="--config.task_net.width=8"):
    _load_pair(_task_config("resnet10", 16, 4, False), variables, info,
               str(tmp_path / "g"))


def test_cli_and_train_state_init(tmp_path):
  """convert CLI on a .pth file, config.init -> the first train state."""
  from crdoco_jax import train
  c = seg.get_config("tiny")
  task = tm.randomize(tm.DeepLab(tm.BasicBlock, (1, 1, 1, 1),
                                 c.task_net.width, imagenet_fc=True), 6)
  torch.save(task.state_dict(), tmp_path / "f.pth")
  subprocess.run([sys.executable, "-m", "crdoco_jax.convert",
                  "--kind=torchvision_resnet", f"--input={tmp_path}/f.pth",
                  f"--output={tmp_path}/f"], check=True, capture_output=True,
                 cwd=os.path.dirname(os.path.dirname(__file__)))
  converted = {"f": pretrained.load(str(tmp_path / "f"))}
  assert converted["f"][1]["source"] == f"{tmp_path}/f.pth"
  others = {"g": (tm.ResnetGenerator(c.translator.ngf, c.translator.n_blocks),
                  "cyclegan_generator"),
            "d": (tm.NLayerDiscriminator(c.disc.img_ndf, c.disc.img_layers),
                  "cyclegan_discriminator")}
  for name, (model, kind) in others.items():
    converted[name] = convert.convert(
        tm.state_dict(tm.randomize(model, 7)), kind)
    pretrained.save(str(tmp_path / name), *converted[name])
  c.init.update(task_net=str(tmp_path / "f"), task_net_domains="T",
                translator_t2s=str(tmp_path / "g"), d_img_s=str(tmp_path / "d"))
  state, _ = train.initial_state(c, str(tmp_path / "work"))
  same = lambda a, b: jax.tree_util.tree_map(np.testing.assert_array_equal,
                                             a, b)
  params = state.task.params
  same({k[:-2]: v for k, v in params.items()
        if k.endswith("_T") and k != "heads_T"}, converted["f"][0]["params"])
  same(state.translator.params["G_T2S"], converted["g"][0]["params"])
  same(state.d_img.params["D_S"], converted["d"][0]["params"])
  assert not np.array_equal(params["stem_S"]["Conv_0"]["kernel"],
                            params["stem_T"]["Conv_0"]["kernel"])
