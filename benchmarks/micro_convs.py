"""Micro-benchmarks behind README "Speed" (CPU): XLA kernel gradients vs the
opt-in matmul kernel gradient (layers.conv wgrad="matmul"), and the
translators' transposed convs vs SubpixelConvTranspose.

  PYTHONPATH=. python benchmarks/micro_convs.py
"""
import time, jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from crdoco_jax.models import layers
def bench(f, *a, n=5):
    f(*a); jax.block_until_ready(f(*a))
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-t)
    return np.median(ts)*1e3
for (shape, k, cout, stride, dil) in [((2,128,128,64),3,64,1,1), ((2,32,32,256),3,256,1,1), ((2,16,16,64),3,64,1,2), ((2,64,64,32),1,64,2,1)]:
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(k,k,shape[-1],cout)) * 0.05, jnp.float32)
    pad = ((dil*(k//2),)*2,)*2
    std = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride,)*2, pad, rhs_dilation=(dil,dil), dimension_numbers=("NHWC","HWIO","NHWC"))
    new = lambda x, w: layers.conv_general_dilated_matmul_wgrad(x, w, (stride,)*2, pad, rhs_dilation=(dil,dil), dimension_numbers=("NHWC","HWIO","NHWC"))
    gw = lambda f: jax.jit(lambda x, w: jax.grad(lambda w: jnp.sum(f(x, w)**2))(w))
    gx = lambda f: jax.jit(lambda x, w: jax.grad(lambda x: jnp.sum(f(x, w)**2))(x))
    a, b = gw(std)(x, w), gw(new)(x, w)
    err = float(jnp.max(jnp.abs(a-b))/jnp.max(jnp.abs(a)))
    print(shape, k, cout, stride, dil, "fwd %.1f ms" % bench(jax.jit(std), x, w), "wgrad xla %.1f ms, matmul %.1f ms" % (bench(gw(std), x, w), bench(gw(new), x, w)), "dgrad xla %.1f" % bench(gx(std), x, w), "relerr %.1e" % err)
from crdoco_jax.models import translator as T
x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 64)), jnp.float32)
ref = nn.ConvTranspose(32, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), kernel_init=nn.initializers.normal(0.1), bias_init=nn.initializers.normal(0.1))
new = T.SubpixelConvTranspose(32)
p = ref.init(jax.random.PRNGKey(0), x)
assert jax.tree_util.tree_map(jnp.shape, p) == jax.tree_util.tree_map(jnp.shape, new.init(jax.random.PRNGKey(0), x))
g = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 32)), jnp.float32)
f = lambda m: jax.jit(lambda p, x: jax.grad(lambda p, x: jnp.sum(m.apply(p, x) * g), (0, 1))(p, x))
a, b = ref.apply(p, x), new.apply(p, x)
print("fwd max err", float(jnp.max(jnp.abs(a - b))), float(jnp.max(jnp.abs(a))))
ga, gb = f(ref)(p, x), f(new)(p, x)
print("grad errs", [float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(u))) for u, v in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb))])
def bench(fn, *a):
    jax.block_until_ready(fn(*a)); ts = []
    for _ in range(5):
        t = time.perf_counter(); jax.block_until_ready(fn(*a)); ts.append(time.perf_counter() - t)
    return 1e3 * np.median(ts)
for shape, co in [((2, 16, 16, 64), 32), ((2, 32, 32, 32), 16)]:
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    g = jnp.ones(shape[:1] + (2 * shape[1], 2 * shape[2], co))
    for name, m in [("conv_transpose", nn.ConvTranspose(co, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)))), ("subpixel", T.SubpixelConvTranspose(co))]:
        p = m.init(jax.random.PRNGKey(0), x)
        fw = jax.jit(m.apply)
        gr = jax.jit(lambda p, x, m=m: jax.grad(lambda p, x: jnp.sum(m.apply(p, x) * g), (0, 1))(p, x))
        print(shape, co, name, "fwd %.2f ms, fwd+grad %.2f ms" % (bench(fw, p, x), bench(gr, p, x)))
