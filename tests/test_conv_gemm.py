"""layers.conv_general_dilated_gemm (compute.conv='gemm') equals XLA's
convolution: outputs and both gradients, every network option."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crdoco_jax.models import layers
from crdoco_jax.models import winograd


def _nhwc(impl):
  return lambda x, k, strides, padding, dilation: impl(
      x, k, strides, padding, rhs_dilation=dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("kernel,stride,padding,dilation,cout", [
    (3, 1, 1, 1, 6), (3, 2, 1, 1, 6), (1, 2, 0, 1, 6), (1, 1, 0, 1, 6),
    (3, 1, 2, 2, 6), (4, 2, 1, 1, 6), (3, 1, "SAME", 2, 6),
    # Unpadded stride 1: run padded and cropped (3x3 on 13x11 keeps 69% of
    # the padded outputs), or as it is (7x7: 24%).
    (3, 1, 0, 1, 6), (7, 1, 0, 1, 6),
    # At most FEW_OUTPUT_CHANNELS outputs: the output-taps forward pass.
    (7, 1, 3, 1, 3), (4, 2, 1, 1, 1), (3, 2, 1, 2, 2),
    # Taps that read only padding are skipped (DeepLab's ASPP on a small
    # map): some of them, all but the centre; asymmetric padding.
    (3, 1, 12, 12, 2), (3, 1, 16, 16, 2), (3, 2, 16, 16, 2),
    (3, 1, (2, 0), 1, 2),
    # Few outputs for a wide input (live taps x outputs <= inputs).
    (3, 1, 16, 16, 30),
    # At least TAP_MATMUL_MIN kernel entries per tap (128 x 128): the kernel
    # gradient as one matmul per kernel row (stride 1, unpadded; dilated
    # too) or per tap.
    (3, 1, 0, 1, 128), (3, 1, 0, 2, 128), (3, 2, 1, 1, 128),
    (3, 1, 2, 2, 128), (3, 1, (2, 0), 1, 128), (3, 1, 12, 12, 128),
    (3, 1, 9, 9, 128)])
def test_gemm_matches_xla(kernel, stride, padding, dilation, cout):
  _check_against_xla(kernel, stride, padding, dilation, cout)


@pytest.mark.parametrize("kernel,stride,padding,dilation,cout", [
    (3, 1, 0, 1, 128), (3, 1, 2, 2, 128), (3, 1, (2, 0), 1, 128),
    (3, 1, 1, 1, 6), (3, 2, 1, 1, 128)])
def test_input_gradient_by_xla_convolution(monkeypatch, kernel, stride,
                                           padding, dilation, cout):
  """The A/B switch INPUT_GRAD_CONV: stride-1 input gradients as XLA's
  transposed convolution (strided ones keep im2col's transpose)."""
  monkeypatch.setattr(layers, "INPUT_GRAD_CONV", True)
  _check_against_xla(kernel, stride, padding, dilation, cout)


@pytest.mark.parametrize("shape,cout", [((2, 8, 6, 3), 5), ((1, 4, 10, 7), 2),
                                         ((2, 12, 14, 16), 16)])
def test_winograd_conv3x3_matches_xla(shape, cout):
  """F(2x2, 3x3): outputs and both gradients of XLA's VALID convolution,
  odd and even tile counts, one tile row."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, shape[-1], cout)), jnp.float32)
  ref = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision="highest")
  y = ref(x, k)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  np.testing.assert_allclose(winograd.conv3x3(x, k), y, rtol=1e-5, atol=1e-4)
  grads = jax.jit(lambda x, k: jax.vjp(winograd.conv3x3, x, k)[1](g))(x, k)
  for a, b in zip(jax.vjp(ref, x, k)[1](g), grads):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4)


def _count_winograd_calls(monkeypatch):
  """The input shapes of every winograd.conv3x3 call from here on."""
  calls, original = [], winograd.conv3x3
  monkeypatch.setattr(layers.winograd, "conv3x3",
                      lambda x, k: calls.append(x.shape) or original(x, k))
  return calls


def test_gemm_takes_winograd_where_it_applies(monkeypatch):
  """conv_general_dilated_gemm sends wide, unpadded 3x3 stride-1 float32
  convolutions with even outputs to winograd.conv3x3, and nothing else;
  with WINOGRAD_MIN None, none."""
  calls = _count_winograd_calls(monkeypatch)
  rng = np.random.default_rng(2)
  k = jnp.asarray(rng.normal(size=(3, 3, 128, 128)) * 0.05, jnp.float32)
  conv = lambda x, pad=0, stride=1: layers.conv_general_dilated_gemm(
      x, k.astype(x.dtype), (stride,) * 2, ((pad, pad),) * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x = jnp.asarray(rng.normal(size=(2, 14, 12, 128)), jnp.float32)
  _check_against_xla(3, 1, 0, 1, 128, shape=(2, 14, 12))  # through it
  assert calls == [(2, 14, 12, 128)] * len(calls) and calls
  calls.clear()
  for skipped in (lambda: conv(x, pad=1), lambda: conv(x, stride=2),
                  lambda: conv(x[:, :13]),
                  lambda: conv(x.astype(jnp.bfloat16))):
    skipped()
  assert not calls
  monkeypatch.setattr(layers, "WINOGRAD_MIN", None)
  conv(x)
  assert not calls
  monkeypatch.setattr(layers, "WINOGRAD_MIN", 128 * 128 + 1)
  conv(x)
  assert not calls


def _check_against_xla(kernel, stride, padding, dilation, cout,
                       shape=(2, 13, 11)):
  rng = np.random.default_rng(0)
  cin = {30: 32, 128: 128}.get(cout, 5)
  if cout == 128:  # the per-tap kernel gradient, not im2col's
    assert cin * cout >= layers.TAP_MATMUL_MIN
  x = jnp.asarray(rng.normal(size=shape + (cin,)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(kernel, kernel, cin, cout)), jnp.float32)
  pad = (padding if padding == "SAME" else (padding,) * 2
         if isinstance(padding, tuple) else ((padding,) * 2,) * 2)
  args = ((stride, stride), pad, (dilation, dilation))
  ref = _nhwc(jax.lax.conv_general_dilated)
  new = _nhwc(layers.conv_general_dilated_gemm)
  y_ref = ref(x, k, *args)
  # A non-trivial cotangent: weights every output element differently.
  g = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
  loss = lambda f: jax.jit(jax.grad(lambda x, k: jnp.sum(f(x, k, *args) * g),
                                    argnums=(0, 1)))
  np.testing.assert_allclose(new(x, k, *args), y_ref, rtol=1e-5, atol=1e-4)
  for a, b in zip(loss(ref)(x, k), loss(new)(x, k)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4)


def test_gemm_bf16():
  """bf16 inputs and kernels: gradients in bf16, close to XLA's."""
  rng = np.random.default_rng(1)
  for cin, cout, pad in ((4, 3, 1), (4, 8, 1), (128, 128, 0)):
    # Both forward forms; the kernel gradient by kernel rows.
    x = jnp.asarray(rng.normal(size=(1, 8, 8, cin)), jnp.bfloat16)
    args = ((1, 1), ((pad, pad), (pad, pad)), (1, 1))
    k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.1, jnp.bfloat16)
    f = lambda impl: lambda x, k: jnp.sum(
        _nhwc(impl)(x, k, *args).astype(jnp.float32) ** 2)
    ref = jax.grad(f(jax.lax.conv_general_dilated), (0, 1))(x, k)
    new = jax.grad(f(layers.conv_general_dilated_gemm), (0, 1))(x, k)
    for a, b in zip(ref, new):
      assert a.dtype == b.dtype == jnp.bfloat16
      np.testing.assert_allclose(np.float32(b), np.float32(a), rtol=3e-2,
                                 atol=3e-2)


def test_unknown_conv_impl_is_an_error():
  with pytest.raises(ValueError, match="'fast'"):
    layers.conv(4, 3, impl="fast")


def _assert_same_function(make, x, call, init_args=()):
  """``make(fast)`` modules: same parameter tree, outputs and gradients
  (w.r.t. parameters and input) to float tolerance."""
  rng = np.random.default_rng(2)
  init = lambda fast: lambda key, x: make(fast).init(key, x, *init_args)
  # Jitted: run op by op, a task net's init and passes compile each op alone.
  variables = jax.jit(init(False))(jax.random.PRNGKey(0), x)
  # Non-zero biases, so that they are checked too.
  variables = {**variables, "params": jax.tree_util.tree_map(
      lambda p: p + 0.1 * jnp.asarray(rng.normal(size=p.shape), p.dtype),
      variables["params"])}
  assert (jax.tree_util.tree_structure(variables) ==
          jax.tree_util.tree_structure(
              jax.eval_shape(init(True), jax.random.PRNGKey(0), x)))
  out = lambda fast: lambda v, x: call(make(fast), v, x)
  target = jax.tree_util.tree_map(
      lambda o: jnp.asarray(rng.normal(size=o.shape), jnp.float32),
      jax.eval_shape(out(False), variables, x))

  def grads_and_outputs(fast):
    def loss(v, x):
      o = out(fast)(v, x)
      return sum(jnp.sum(a * t) for a, t in zip(
          jax.tree_util.tree_leaves(o), jax.tree_util.tree_leaves(target))), o
    return jax.jit(jax.grad(loss, (0, 1), has_aux=True))(variables, x)

  ref, new = grads_and_outputs(False), grads_and_outputs(True)
  _assert_close(ref[1], new[1])  # outputs
  _assert_close(ref[0], new[0])  # gradients


def _assert_close(ref, new):
  # Tolerance relative to the largest value: e.g. biases before a
  # normalisation have a gradient of exactly zero in exact arithmetic,
  # rounding noise here.
  scale = max(float(np.max(np.abs(a))) for a in jax.tree_util.tree_leaves(ref))
  for a, b in zip(jax.tree_util.tree_leaves(ref),
                  jax.tree_util.tree_leaves(new)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("share_encoder,option", [
    (False, dict(subpixel=True)), (True, dict(subpixel=True)),
    (False, dict(conv_impl="gemm")),
    (True, dict(subpixel=True, conv_impl="gemm"))])
def test_translator_speed_options_match_the_plain_translator(share_encoder,
                                                             option):
  """Subpixel upsampling (vs the transposed convs) and gemm convolutions."""
  from crdoco_jax.models import translator  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 12, 8, 3)),
                  jnp.float32)
  make = lambda fast: translator.TranslatorPair(
      ngf=4, n_blocks=2, encoder_blocks=1, share_encoder=share_encoder,
      **(option if fast else {}))
  for direction in ("S2T", "T2S"):
    _assert_same_function(make, x, lambda m, v, x: m.apply(v, x, direction))


def test_translator_with_winograd_residual_blocks_matches_plain(monkeypatch):
  """The gemm translator whose residual blocks run as Winograd (its
  threshold lowered to this tiny width) computes the plain translator's
  function and gradients."""
  from crdoco_jax.models import translator  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(layers, "WINOGRAD_MIN", 16 * 16)  # ngf 4: 16 x 16
  calls = _count_winograd_calls(monkeypatch)
  # 16x8 images: 4x2 residual maps, even, as Winograd needs.
  x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (2, 16, 8, 3)),
                  jnp.float32)
  make = lambda fast: translator.TranslatorPair(
      ngf=4, n_blocks=2, **(dict(conv_impl="gemm", subpixel=True)
                            if fast else {}))
  _assert_same_function(make, x, lambda m, v, x: m.apply(v, x, "T2S"))
  assert calls and set(calls) == {(2, 6, 4, 16)}


def test_gemm_task_nets_and_discriminators_match_xla():
  """A bottleneck DeepLab with both heads (1x1, strided and dilated convs,
  ASPP), in eval mode, and both kinds of discriminator."""
  from crdoco_jax import models  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (2, 24, 24, 3)),
                  jnp.float32)
  impl = lambda fast: "gemm" if fast else "xla"
  _assert_same_function(
      lambda fast: models.TaskNetPair("resnet14", 5, True, width=8,
                                      conv_impl=impl(fast)),
      x, lambda m, v, x: m.apply(v, x, "T"))
  _assert_same_function(
      lambda fast: models.PatchGAN(8, 3, conv_impl=impl(fast)),
      jnp.tile(x, (1, 2, 2, 1)), lambda m, v, x: m.apply(v, x))
  _assert_same_function(
      lambda fast: models.FCDiscriminator(8, conv_impl=impl(fast)),
      jnp.tile(x, (1, 2, 2, 1)), lambda m, v, x: m.apply(v, x))
