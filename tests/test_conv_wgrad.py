"""The opt-in matmul kernel gradient of layers.conv equals XLA's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crdoco_jax.models import layers


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    (3, 1, 1, 1), (3, 2, 1, 1), (1, 2, 0, 1), (3, 1, 2, 2), (4, 2, 1, 1),
    (7, 1, 0, 1), (3, 1, "SAME", 2)])
def test_matmul_wgrad_matches_xla(kernel, stride, padding, dilation):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 13, 11, 5)), jnp.float32)
  make = lambda wgrad: layers.conv(6, kernel, stride, padding, dilation,
                                   wgrad=wgrad)
  if padding == "SAME":
    make = lambda wgrad: layers.nn.Conv(
        6, (kernel, kernel), padding="SAME", kernel_dilation=dilation,
        conv_general_dilated=(layers.conv_general_dilated_matmul_wgrad
                              if wgrad == "matmul" else None))
  params = make("xla").init(jax.random.PRNGKey(0), x)
  y_ref = jnp.asarray(rng.normal(size=make("xla").apply(params, x).shape),
                      jnp.float32)
  def loss(wgrad):
    # A non-trivial cotangent: weights every output element differently.
    return lambda p, x: jnp.sum(make(wgrad).apply(p, x) * y_ref)
  out = {w: make(w).apply(params, x) for w in layers.WGRAD}
  grads = {w: jax.jit(jax.grad(loss(w), argnums=(0, 1)))(params, x)
           for w in layers.WGRAD}
  np.testing.assert_array_equal(out["xla"], out["matmul"])
  for a, b in zip(jax.tree_util.tree_leaves(grads["xla"]),
                  jax.tree_util.tree_leaves(grads["matmul"])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_matmul_wgrad_second_use_and_bf16():
  """bf16 inputs and kernels: gradients in bf16, close to XLA's."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(1, 8, 8, 4)), jnp.bfloat16)
  k = jnp.asarray(rng.normal(size=(3, 3, 4, 3)) * 0.1, jnp.bfloat16)
  pad = ((1, 1), (1, 1))
  f = lambda impl: lambda x, k: jnp.sum(impl(
      x, k, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
  ).astype(jnp.float32) ** 2)
  ref = jax.grad(f(jax.lax.conv_general_dilated), (0, 1))(x, k)
  new = jax.grad(f(layers.conv_general_dilated_matmul_wgrad), (0, 1))(x, k)
  for a, b in zip(ref, new):
    assert a.dtype == b.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(b), np.float32(a), rtol=2e-2,
                               atol=2e-2)


def test_unknown_wgrad_is_an_error():
  with pytest.raises(ValueError, match="wgrad"):
    layers.conv(4, 3, wgrad="fast")


@pytest.mark.parametrize("share_encoder,option", [
    (False, dict(subpixel=True)), (True, dict(subpixel=True)),
    (True, dict(wgrad="matmul"))])
def test_translator_speed_options_match_the_plain_translator(share_encoder,
                                                             option):
  """Subpixel upsampling (vs the transposed convs) and matmul kernel
  gradients: same parameter tree, same outputs and gradients to float
  tolerance."""
  from crdoco_jax.models import translator  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 12, 8, 3)), jnp.float32)
  make = lambda fast: translator.TranslatorPair(
      ngf=4, n_blocks=2, encoder_blocks=1, share_encoder=share_encoder,
      **(option if fast else {}))
  params = make(False).init(jax.random.PRNGKey(0), x)
  # Non-zero biases, so that they are checked too.
  params = jax.tree_util.tree_map(
      lambda p: p + 0.1 * jnp.asarray(rng.normal(size=p.shape), p.dtype),
      params)
  assert (jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      make(True).init(jax.random.PRNGKey(0), x)))
  target = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  loss = lambda sub: lambda p, x: jnp.sum(
      make(sub).apply(p, x, "S2T") * target)
  for direction in ("S2T", "T2S"):
    np.testing.assert_allclose(make(True).apply(params, x, direction),
                               make(False).apply(params, x, direction),
                               rtol=1e-5, atol=1e-5)
  ref = jax.grad(loss(False), (0, 1))(params, x)
  new = jax.grad(loss(True), (0, 1))(params, x)
  # Biases before an instance norm have a gradient of exactly zero in exact
  # arithmetic, rounding noise here: tolerance relative to the largest.
  scale = max(float(np.max(np.abs(a))) for a in jax.tree_util.tree_leaves(ref))
  for a, b in zip(jax.tree_util.tree_leaves(ref),
                  jax.tree_util.tree_leaves(new)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale)
