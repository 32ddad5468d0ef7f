"""Flax Linen networks of CrDoCo (NHWC, pure functional)."""
import functools
from typing import NamedTuple, Optional

import jax.numpy as jnp
import ml_collections

from crdoco_jax.models.deeplab import FEATURES, TaskNetPair, sown_features
from crdoco_jax.models.discriminators import (DiscriminatorPair,
                                              FCDiscriminator,
                                              FeatureDiscriminator, PatchGAN)
from crdoco_jax.models.flownet import FlowNetSPair
from crdoco_jax.models.translator import ResnetGenerator, TranslatorPair


__all__ = ["FEATURES", "DiscriminatorPair", "FCDiscriminator",
           "FeatureDiscriminator", "FlowNetSPair", "Networks", "PatchGAN",
           "ResnetGenerator", "TaskNetPair", "TranslatorPair",
           "build_networks", "feature_level", "sown_features"]


class Networks(NamedTuple):
  """The four network pairs of CrDoCo (module definitions, no parameters)."""
  translator: TranslatorPair      # G_S2T, G_T2S
  task: TaskNetPair               # F_S, F_T (FlowNetSPair for flow)
  d_img: DiscriminatorPair        # PatchGANs on images of S / T
  d_feat: DiscriminatorPair       # Ds on F_S / F_T softmax (or features)


FEAT_INPUTS = ("output", "features")  # disc.feat_input


def feature_level(config: ml_collections.ConfigDict) -> bool:
  """Whether D_feat judges the task nets' backbone features
  (``disc.feat_input='features'``) instead of their softmax outputs
  (``'output'``: AdaptSegNet's output space, the released code's)."""
  choice = config.disc.get("feat_input", "output")
  if choice not in FEAT_INPUTS:
    raise ValueError(f"disc.feat_input={choice!r}; use one of {FEAT_INPUTS}.")
  if choice == "features" and config.task_net.arch == "flownets":
    raise ValueError("disc.feat_input='features' needs a DeepLab task net; "
                     "FlowNetS exposes no backbone features. Use 'output'.")
  return choice == "features"


def build_networks(config: ml_collections.ConfigDict,
                   bn_axis_name: Optional[str] = None) -> Networks:
  """Module definitions from a config. ``bn_axis_name`` synchronises the
  task nets' BatchNorm over that pmap axis (None outside pmap)."""
  dtype = jnp.dtype(config.compute.dtype)
  # Configs written before the key existed: XLA's convolutions.
  conv = config.compute.get("conv", "xla")
  t, f, d = config.translator, config.task_net, config.disc
  judge = FeatureDiscriminator if feature_level(config) else FCDiscriminator
  out_channels = (config.data.num_classes if config.task == "segmentation"
                  else config.data.out_channels)
  if f.arch == "flownets":  # task_net.levels: encoder stages
    task = FlowNetSPair(f.width, f.levels, out_channels, f.multi_level,
                        f.frozen_bn, bn_axis_name, dtype,
                        f.get("correlation", 0), conv)
  else:
    task = TaskNetPair(f.arch, out_channels, f.multi_level, f.share_last,
                       f.frozen_bn, bn_axis_name, True, f.remat, dtype,
                       f.width,
                       # Configs written before the key existed: Caffe style.
                       stride_on_3x3=f.get("stride_on_3x3", False),
                       conv_impl=conv)
  return Networks(
      translator=TranslatorPair(t.ngf, t.n_blocks, t.share_encoder,
                                t.encoder_blocks, t.remat, dtype,
                                t.get("subpixel", False),
                                t.get("residual", False),
                                # translator.wgrad='matmul' (matmul kernel
                                # gradients) is now a part of 'gemm'.
                                "gemm" if t.get("wgrad") == "matmul"
                                else conv),
      task=task,
      d_img=DiscriminatorPair(functools.partial(
          PatchGAN, d.img_ndf, d.img_layers, dtype, conv)),
      d_feat=DiscriminatorPair(functools.partial(
          judge, d.feat_ndf, dtype, conv)),
  )
