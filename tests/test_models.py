"""Networks: shapes, dtypes, parameter counts, BN behaviour and sharing."""
import functools
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crdoco_jax.models import (DiscriminatorPair, FCDiscriminator,
                               FlowNetSPair, PatchGAN,
                               ResnetGenerator, TaskNetPair, TranslatorPair,
                               layers, normalization)

KEY = jax.random.PRNGKey(0)


def n_params(module, *args, **kwargs):
  shapes = jax.eval_shape(lambda: module.init(KEY, *args, **kwargs))
  return layers.count_params(shapes["params"])


X64 = jnp.zeros((1, 64, 64, 3))


# Counts printed by ../shared/bench/torch_crdoco_step.py and REFERENCE.md.
@pytest.mark.parametrize("module,inputs,expected", [
    (ResnetGenerator(64, 9), X64, 11_378_179),
    (ResnetGenerator(64, 6), X64, 7_837_699),
    (ResnetGenerator(32, 6), X64, 1_965_059),
    (PatchGAN(64, 3), X64, 2_764_737),
    (FCDiscriminator(), jnp.zeros((1, 64, 64, 19)), 2_781_121),
    (FCDiscriminator(), jnp.zeros((1, 64, 64, 16)), 2_778_049),
    # A pair sharing all 6 units is one network: F's own count.
    (TaskNetPair("resnet18", 19, False, share_last=6), X64, 11_526_796),
    (TaskNetPair("resnet50", 19, False, share_last=6), X64, 24_908_940),
    (TaskNetPair("resnet101", 19, False, share_last=6), X64, 43_901_068),
    (TaskNetPair("resnet101", 19, True, share_last=6), X64, 44_601_560),
])
def test_parameter_counts_match_reference(module, inputs, expected):
  assert n_params(module, inputs) == expected


def test_translator_shapes_range_and_bf16():
  model = TranslatorPair(ngf=8, n_blocks=2)
  x = jax.random.uniform(KEY, (2, 32, 48, 3), minval=-1, maxval=1)
  params = jax.jit(model.init)(KEY, x)["params"]
  for direction in ("S2T", "T2S"):
    y = model.apply({"params": params}, x, direction)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(y))) <= 1.0
  y16 = TranslatorPair(ngf=8, n_blocks=2, dtype=jnp.bfloat16).apply(
      {"params": params}, x.astype(jnp.bfloat16), "S2T")
  assert y16.shape == x.shape and bool(jnp.all(jnp.isfinite(y16)))
  with pytest.raises(ValueError, match="direction"):
    model.apply({"params": params}, x, "S2S")


def test_translator_directions_differ_unless_shared_params():
  model = TranslatorPair(ngf=8, n_blocks=2)
  x = jax.random.uniform(KEY, (1, 16, 16, 3), minval=-1, maxval=1)
  params = jax.jit(model.init)(KEY, x)["params"]
  assert set(params) == {"G_S2T", "G_T2S"}
  a = model.apply({"params": params}, x, "S2T")
  b = model.apply({"params": params}, x, "T2S")
  assert not np.allclose(a, b)


def test_translator_shared_encoder_is_one_parameter_set_with_two_gradients():
  kw = dict(ngf=8, n_blocks=4, encoder_blocks=2)
  shared = TranslatorPair(share_encoder=True, **kw)
  x = jax.random.uniform(KEY, (1, 16, 16, 3), minval=-1, maxval=1)
  params = jax.jit(shared.init)(KEY, x)["params"]
  assert set(params) == {"encoder", "decoder_S2T", "decoder_T2S"}
  unshared = n_params(TranslatorPair(share_encoder=False, **kw), x)
  enc = layers.count_params(params["encoder"])
  assert layers.count_params(params) == unshared - enc

  def grad_of(direction):
    return jax.jit(jax.grad(lambda p: jnp.sum(shared.apply(
        {"params": p}, x, direction) ** 2)))(params)
  g_st, g_ts = grad_of("S2T"), grad_of("T2S")
  norm = lambda t: float(sum(jnp.sum(l ** 2) for l in jax.tree.leaves(t)))
  assert norm(g_st["encoder"]) > 0 and norm(g_ts["encoder"]) > 0
  assert norm(g_st["decoder_T2S"]) == 0 and norm(g_ts["decoder_S2T"]) == 0


@pytest.mark.parametrize("share_encoder", [False, True])
def test_residual_translator_starts_at_identity_and_learns(share_encoder):
  kw = dict(ngf=4, n_blocks=2, share_encoder=share_encoder)
  model = TranslatorPair(residual=True, **kw)
  x = jax.random.uniform(KEY, (2, 16, 16, 3), minval=-0.99, maxval=0.99)
  params = jax.jit(model.init)(KEY, x)["params"]
  # Same parameters as the plain translator, which is far from identity.
  plain = TranslatorPair(**kw)
  assert (jax.tree.structure(params)
          == jax.tree.structure(jax.jit(plain.init)(KEY, x)["params"]))
  assert float(jnp.abs(plain.apply({"params": params}, x, "S2T") - x).max()
               ) > 0.1
  for direction in ("S2T", "T2S"):
    y = model.apply({"params": params}, x, direction)
    np.testing.assert_allclose(y, x, atol=1e-5)
  # Saturated pixels stay finite and inside [-1, 1].
  edge = jnp.sign(x)
  assert bool(jnp.all(jnp.abs(model.apply({"params": params}, edge, "S2T"))
                      <= 1.0))
  # A step on a colour-shift objective moves the output towards it.
  loss = lambda p: jnp.mean((model.apply({"params": p}, x, "S2T")
                             - (x * 0.5 + 0.2)) ** 2)
  g = jax.jit(jax.grad(loss))(params)
  stepped = jax.tree.map(lambda p, d: p - 0.02 * d, params, g)
  assert float(loss(stepped)) < float(loss(params))


def test_discriminator_output_shapes():
  x = jnp.zeros((2, 64, 64, 3))
  pair = DiscriminatorPair(lambda: PatchGAN(ndf=8))
  params = jax.jit(pair.init)(KEY, x)["params"]
  assert set(params) == {"D_S", "D_T"}
  assert pair.apply({"params": params}, x, "T").shape == (2, 6, 6, 1)
  fc = FCDiscriminator(ndf=8)
  p = jax.jit(fc.init)(KEY, jnp.zeros((2, 64, 64, 5)))
  assert fc.apply(p, jnp.zeros((2, 64, 64, 5))).shape == (2, 2, 2, 1)


def test_ceil_mode_max_pool_matches_pytorch_sizes():
  # PyTorch MaxPool2d(3, 2, 1, ceil_mode=True): 64 -> 33, 65 -> 33, 9 -> 5.
  for size, expected in ((64, 33), (65, 33), (9, 5), (32, 17)):
    y = layers.max_pool_ceil(jnp.zeros((1, size, size, 1)))
    assert y.shape[1] == expected, (size, y.shape)


def test_ceil_mode_max_pool_equals_flax_max_pool():
  # Values and gradients of nn.max_pool over the same padding, on inputs
  # without ties; odd and even sizes, bf16 too.
  for shape, dtype in (((2, 9, 8, 3), jnp.float32), ((1, 7, 7, 2),
                                                     jnp.bfloat16)):
    x = (jax.random.permutation(KEY, np.prod(shape)).reshape(shape)
         - np.prod(shape) // 2).astype(dtype)  # negative too: -inf pads
    pads = [(1, 1) if s % 2 else (1, 2) for s in shape[1:3]]  # ceil mode
    ref = lambda x: nn.max_pool(x, (3, 3), (2, 2), padding=pads)
    w = jax.random.normal(KEY, ref(x).shape)
    outs = [jax.value_and_grad(lambda x: jnp.sum(f(x).astype(jnp.float32)
                                                 * w))(x)
            for f in (ref, layers.max_pool_ceil)]
    np.testing.assert_array_equal(ref(x), layers.max_pool_ceil(x))
    for a, b in zip(*outs):
      np.testing.assert_allclose(np.float32(b), np.float32(a), rtol=1e-6)


def test_bilinear_align_corners_resize():
  x = jnp.arange(12.0).reshape(1, 3, 4, 1)
  y = layers.resize_bilinear_align_corners(x, (5, 7))
  # Corners are kept exactly and the map is linear in between.
  np.testing.assert_allclose(y[0, [0, 0, -1, -1], [0, -1, 0, -1], 0],
                             [0, 3, 8, 11])
  np.testing.assert_allclose(y[0, 2, :, 0], np.linspace(4, 7, 7), rtol=1e-6)


def small_task_pair(**kw):
  kw = {"arch": "resnet18", "out_channels": 5, "multi_level": True, **kw}
  return TaskNetPair(**kw)


def test_task_net_outputs_and_bn_update_only_in_train_mode():
  model = small_task_pair()
  x = jax.random.normal(KEY, (2, 32, 32, 3))
  variables = jax.jit(model.init)(KEY, x)
  assert set(variables) == {"params", "batch_stats"}
  out = model.apply(variables, x, "T")
  assert set(out) == {"main", "aux"}
  assert out["main"].shape == (2, 32, 32, 5) and out["main"].dtype == jnp.float32
  out, new = model.apply(variables, x, "T", train=True,
                         mutable=["batch_stats"])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         variables["batch_stats"], new["batch_stats"])
  assert any(jax.tree.leaves(changed["stem_T"]))
  assert not any(jax.tree.leaves(changed["stem_S"]))
  _, same = model.apply(variables, x, "T", train=False, mutable=["batch_stats"])
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                   variables["batch_stats"],
                                   same["batch_stats"]))
  # Frozen BN: train mode but running statistics stay as they are.
  frozen = small_task_pair(frozen_bn=True)
  _, fz = frozen.apply(variables, x, "T", train=True, mutable=["batch_stats"])
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                   variables["batch_stats"], fz["batch_stats"]))


def test_partial_sharing_shares_parameters_and_gets_both_gradients():
  model = small_task_pair(share_last=2, multi_level=False)
  x = jax.random.normal(KEY, (1, 32, 32, 3))
  variables = jax.jit(model.init)(KEY, x)
  params = variables["params"]
  assert {"layer4", "heads", "stem_S", "stem_T", "layer3_S"} <= set(params)
  assert "layer4_S" not in params and "heads_T" not in params

  def grad_of(domain):
    f = lambda p: jnp.sum(model.apply({**variables, "params": p}, x,
                                      domain)["main"] ** 2)
    return jax.jit(jax.grad(f))(params)
  norm = lambda t: float(sum(jnp.sum(l ** 2) for l in jax.tree.leaves(t)))
  g_s, g_t = grad_of("S"), grad_of("T")
  assert norm(g_s["layer4"]) > 0 and norm(g_t["layer4"]) > 0
  assert norm(g_s["stem_T"]) == 0 and norm(g_t["stem_S"]) == 0


def test_task_net_regression_head_bf16_and_remat():
  model = small_task_pair(out_channels=1, multi_level=False, remat=True,
                          dtype=jnp.bfloat16)
  x = jax.random.normal(KEY, (1, 32, 32, 3))
  variables = jax.jit(model.init)(KEY, x)
  assert jax.tree.leaves(variables["params"])[0].dtype == jnp.float32
  # remat keeps the parameter names: checkpoints load either way.
  plain = small_task_pair(out_channels=1, multi_level=False)
  assert (jax.tree.structure(jax.eval_shape(plain.init, KEY, x))
          == jax.tree.structure(variables))
  # One compiled program: op by op, this test took ~40 s on 2 CPU cores.
  def mean_out(p):
    out, _ = model.apply({**variables, "params": p}, x, "S", train=True,
                         mutable=["batch_stats"])
    return jnp.mean(out["main"]), out
  (_, out), g = jax.jit(jax.value_and_grad(mean_out, has_aux=True))(
      variables["params"])
  assert out["main"].shape == (1, 32, 32, 1)
  assert bool(jnp.all(jnp.isfinite(out["main"])))
  assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(g))


def test_synchronised_bn_under_pmap_matches_global_batch():
  n = jax.local_device_count()
  model = small_task_pair(multi_level=False)
  synced = small_task_pair(multi_level=False, bn_axis_name="batch")
  x = jax.random.normal(KEY, (n * 2, 32, 32, 3))
  variables = jax.jit(model.init)(KEY, x[:1])
  full, new_full = model.apply(variables, x, "S", train=True,
                               mutable=["batch_stats"])
  rep = flax.jax_utils.replicate(variables)
  out, new = jax.pmap(lambda v, xb: synced.apply(
      v, xb, "S", train=True, mutable=["batch_stats"]), axis_name="batch")(
          rep, x.reshape(n, 2, *x.shape[1:]))
  np.testing.assert_allclose(out["main"].reshape(full["main"].shape),
                             full["main"], rtol=2e-4, atol=2e-4)
  leaf = lambda t: jax.tree.leaves(t["batch_stats"]["stem_S"])[0]
  np.testing.assert_allclose(leaf(new)[0], leaf(new_full), rtol=1e-4,
                             atol=1e-5)


def test_bad_arch_and_share_last_errors():
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match="resnet7"):
    TaskNetPair("resnet7").init(KEY, x)
  with pytest.raises(ValueError, match="share_last"):
    TaskNetPair("resnet18", share_last=9).init(KEY, x)


@pytest.mark.parametrize("axis_name,groups", [(None, 1), (None, 2),
                                               ("batch", 1), ("batch", 2)])
def test_batch_norm_equals_flax_successive_calls(axis_name, groups):
  # normalization.BatchNorm(groups=2) on [a; b] = nn.BatchNorm on a, then on
  # b; groups=1 on a, then on b, too: outputs, running statistics
  # (averaged in a first) and gradients (its own VJP against autodiff).
  n = jax.local_device_count()
  kwargs = dict(momentum=0.9, epsilon=1e-5, axis_name=axis_name)
  plain, ours = nn.BatchNorm(**kwargs), normalization.BatchNorm(groups, **kwargs)
  keys = jax.random.split(KEY, 4)
  a = 3.0 * jax.random.normal(keys[0], (n, 2, 5, 5, 4)) + 1.0
  b = jax.random.normal(keys[1], (n, 2, 5, 5, 4)) - 2.0
  variables = {"params": {"scale": 1 + jax.random.normal(keys[2], (4,)),
                          "bias": jax.random.normal(keys[3], (4,))},
               "batch_stats": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}

  def two_calls(module, params, a, b):
    v = dict(variables, params=params)
    ya, m = module.apply(v, a, False, mutable=["batch_stats"])
    yb, m = module.apply(dict(v, **m), b, False, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(ya)) + jnp.sum(jnp.cos(yb)), (ya, yb, m)

  def one_call(params, a, b):
    y, m = ours.apply(dict(variables, params=params),
                      jnp.concatenate([a, b]), False, mutable=["batch_stats"])
    ya, yb = y[:a.shape[0]], y[a.shape[0]:]
    return jnp.sum(jnp.sin(ya)) + jnp.sum(jnp.cos(yb)), (ya, yb, m)

  results = []
  for fn in (functools.partial(two_calls, plain),
             one_call if groups == 2 else functools.partial(two_calls, ours)):
    f = jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True)
    f = jax.pmap(f, axis_name="batch", in_axes=(None, 0, 0)) if axis_name \
        else jax.vmap(f, in_axes=(None, 0, 0))
    results.append(f(variables["params"], a, b))
  for x, y in zip(*(jax.tree.leaves(r) for r in results)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_batch_norm_statistics_gradients_match_autodiff():
  # Cotangents of the returned mean and variance too, over devices, in
  # bf16 activations: normalize's VJP against autodiff of the same maths.
  n = jax.local_device_count()
  x = (2.0 * jax.random.normal(KEY, (n, 4, 3, 3, 5)) + 0.5).astype(
      jnp.bfloat16)
  scale, bias = jnp.linspace(0.5, 2.0, 5), jnp.linspace(-1.0, 1.0, 5)

  def reference(x, scale, bias):
    xg = x.reshape(2, 2, -1, 5).astype(jnp.float32)
    mean = jax.lax.pmean(xg.mean((1, 2)), "d")
    var = jax.lax.pmean(jnp.square(xg - mean[:, None, None]).mean((1, 2)),
                        "d")
    y = (xg - mean[:, None, None]) * jax.lax.rsqrt(var[:, None, None] + 1e-3)
    return ((y * scale + bias).reshape(x.shape).astype(jnp.bfloat16), mean,
            var)

  ours = lambda x, s, b: normalization.normalize(x, s, b, 2, 1e-3, "d",
                                              jnp.bfloat16)
  weights = [jax.random.normal(k, shape) for k, shape in zip(
      jax.random.split(KEY, 3), [x.shape, (n, 2, 5), (n, 2, 5)])]

  def loss(fn, x, s, b, w):
    return sum(jnp.sum(o.astype(jnp.float32) * wi)
               for o, wi in zip(fn(x, s, b), w))

  grads = [jax.pmap(jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2)),
                    axis_name="d", in_axes=(0, None, None, 0))(
                        x, scale, bias, weights)
           for fn in (reference, ours)]
  for g_ref, g_ours in zip(*grads):
    assert g_ref.dtype == g_ours.dtype
    np.testing.assert_allclose(np.float32(g_ours), np.float32(g_ref),
                               rtol=2e-2, atol=2e-2)


def test_batch_norm_bad_group_count_errors():
  with pytest.raises(ValueError, match="divisible by 2, got 3"):
    normalization.BatchNorm(2).init(KEY, jnp.zeros((3, 2, 2, 1)), False)


@pytest.mark.parametrize("model,channels", [
    (small_task_pair(multi_level=True), 3),
    # FlowNetC-style: the siamese stage's BN modules see each frame.
    (FlowNetSPair(8, 3, correlation=2), 6),
])
def test_grouped_task_net_pass_equals_two_passes(model, channels):
  x = jax.random.normal(KEY, (4, 32, 32, channels))
  variables = jax.jit(model.init)(KEY, x[:2])
  run = lambda m, v, x: m.apply(v, x, "T", train=True,
                                mutable=["batch_stats"])
  out_a, new = run(model, variables, x[:2])
  out_b, new = run(model, dict(variables, **new), x[2:])
  out, new_grouped = run(model.clone(bn_groups=2), variables, x)
  for h in out:
    np.testing.assert_allclose(out[h][:2], out_a[h], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[h][2:], out_b[h], rtol=1e-4, atol=1e-5)
  assert (jax.tree.structure(new_grouped) == jax.tree.structure(new))
  for p, q in zip(jax.tree.leaves(new), jax.tree.leaves(new_grouped)):
    np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="divisible by 2"):
    run(model.clone(bn_groups=2), variables, x[:3])
