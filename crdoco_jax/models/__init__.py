"""Flax Linen networks of CrDoCo (NHWC, pure functional)."""
from crdoco_jax.models.deeplab import TaskNetPair
from crdoco_jax.models.discriminators import (DiscriminatorPair,
                                              FCDiscriminator, PatchGAN)
from crdoco_jax.models.translator import ResnetGenerator, TranslatorPair
