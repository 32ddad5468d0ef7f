"""Training-mode BatchNorm with a hand-written gradient.

XLA's autodiff of ``(x - mean) * rsqrt(var + eps) * scale + bias`` with
batch statistics reads the activations and their gradient in several
passes. Its gradient needs just two: one reduction (the per-channel means
of ``g`` and ``g * x``), then one elementwise pass ``dx = a * g + b * x +
c`` with per-channel ``a, b, c``. On CPU a BatchNorm + ReLU's forward and
backward pass runs 1.1-2x as fast so, DeepLab-50's about 4% faster
(docs/performance_log.md, session 35). Same maths as ``nn.BatchNorm``,
whose variables and auto-names :class:`BatchNorm` keeps.
"""
import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def group_size(batch: int, groups: int) -> int:
  """``batch // groups``; an error unless ``groups`` divides ``batch``."""
  if batch % groups:
    raise ValueError(f"BatchNorm over {groups} groups needs a batch "
                     f"divisible by {groups}, got {batch}.")
  return batch // groups


def _grouped(x: jax.Array, groups: int) -> jax.Array:
  """``[N, ..., C]`` -> ``[groups, N // groups, P, C]`` in float32."""
  n = group_size(x.shape[0], groups)
  return x.reshape(groups, n, -1, x.shape[-1]).astype(jnp.float32)


def _pmean(v: jax.Array, axis_name: Optional[str]) -> jax.Array:
  return v if axis_name is None else jax.lax.pmean(v, axis_name)


def _per_channel(v: jax.Array) -> jax.Array:
  """``[G, C]`` -> ``[G, 1, 1, C]``, to broadcast against grouped arrays."""
  return v[:, None, None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int,
              epsilon: float, axis_name: Optional[str], dtype: Dtype
              ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Batch normalisation of ``x`` ``[N, ..., C]`` over ``groups`` equal
  slices of its batch, each by its own statistics (over the slice's
  samples and positions, and over the devices of ``axis_name``).

  Returns ``(y, mean, var)``: ``y`` like ``x`` in ``dtype``; the biased
  batch mean and variance ``[groups, C]``, float32. ``scale``, ``bias``:
  ``[C]``.
  """
  return _normalize_fwd(x, scale, bias, groups, epsilon, axis_name,
                        dtype)[0]


def _normalize_fwd(x, scale, bias, groups, epsilon, axis_name, dtype):
  xg = _grouped(x, groups)
  mean, mean2 = _pmean(jnp.stack([xg.mean((1, 2)), jnp.square(xg).mean(
      (1, 2))]), axis_name)
  var = jnp.maximum(0.0, mean2 - jnp.square(mean))
  inv = jax.lax.rsqrt(var + epsilon)
  mul = scale * inv
  y = xg * _per_channel(mul) + _per_channel(bias - mean * mul)
  return (y.reshape(x.shape).astype(dtype), mean, var), (x, scale, mean, inv)


def _normalize_bwd(groups, epsilon, axis_name, dtype, residuals, cotangents):
  del epsilon, dtype
  x, scale, mean, inv = residuals
  gy, g_mean, g_var = cotangents
  xg, gg = _grouped(x, groups), _grouped(gy, groups)
  count = xg.shape[1] * xg.shape[2]  # per group and device
  local_g, local_gx = gg.mean((1, 2)), (gg * xg).mean((1, 2))
  # Every device's loss reaches x through the synchronised statistics.
  e_g, e_gx, g_mean, g_var = _pmean(
      jnp.stack([local_g, local_gx, g_mean, g_var]), axis_name)
  # Uncentred, as the forward's E[x^2] - E[x]^2 (nn.BatchNorm's default):
  # mean(g * (x - mean)) here would make XLA write x - mean out, 15-70%
  # more time. Its cancellation grows with |mean| / std, the forward's
  # with its square.
  cov = e_gx - mean * e_g
  # dx = a * g + b * x + c: the terms through y's scale (a), through the
  # variance (b) and through the mean (c), per group and channel.
  a = scale * inv
  b = 2.0 * g_var / count - scale * inv ** 3 * cov
  c = g_mean / count - a * e_g - b * mean
  dx = gg * _per_channel(a) + xg * _per_channel(b) + _per_channel(c)
  # Parameters get this device's gradient only, as under autodiff (the
  # train step averages them over devices).
  g_scale = count * jnp.sum(inv * (local_gx - mean * local_g), 0)
  g_bias = count * jnp.sum(local_g, 0)
  return dx.reshape(x.shape).astype(x.dtype), g_scale, g_bias


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
  """``nn.BatchNorm`` (channels last, with scale and bias; no masks or
  axis index groups) through :func:`normalize`, applied to ``groups``
  equal slices of the batch at once as ``groups`` successive calls would:
  each slice is normalised by its own statistics (synchronised over
  ``axis_name``), and the running statistics average them in slice by
  slice. So two inputs of one network can share one pass, each keeping its
  own batch statistics.

  The same variables as ``nn.BatchNorm`` (and the same auto-name,
  ``BatchNorm_<i>``), so one parameter tree serves both.
  """
  groups: int = 1
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: Any = None
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,),
                            jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    dtype = self.dtype or jnp.result_type(x, scale)
    if use_running_average:
      mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      return ((x - ra_mean.value) * mul + bias).astype(dtype)
    initializing = self.is_initializing()
    y, mean, var = normalize(x, scale, bias, self.groups, self.epsilon,
                             None if initializing else self.axis_name, dtype)
    if not initializing:
      for g in range(self.groups):
        ra_mean.value = (self.momentum * ra_mean.value
                         + (1 - self.momentum) * mean[g])
        ra_var.value = (self.momentum * ra_var.value
                        + (1 - self.momentum) * var[g])
    return y

