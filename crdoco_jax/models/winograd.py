"""3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3).

Each 2x2 block of outputs is computed from its 4x4 window of the input in a
transformed basis where the 3x3 convolution becomes an elementwise product:
``Y = A^T [(G g G^T) * (B^T d B)] A`` (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016). Summed over input channels, the 16
elementwise products are 16 matmuls ``[tiles, C_in] @ [C_in, C_out]``: 16
multiplies per 2x2 outputs instead of 36, 2.25x fewer FLOPs, in the forward
pass and in both gradients (``conv3x3``'s custom VJP runs the same
transforms transposed). The transforms' coefficients (0, +-1, +-1/2) are
exact in floating point, so the result differs from a direct convolution
only by summation order (relative error about 1e-6 in float32).

Used by ``layers.conv_general_dilated_gemm`` for the translators' residual
blocks (3x3, 256 -> 256 on reflection-padded 34x34 maps at the reference
sizes), where XLA:CPU's direct convolution is slower than PyTorch's
(docs/performance_log.md, session 39).
"""
import jax
import jax.numpy as jnp


def _bt(d):
  """``B^T d`` over the first axis of the 4-list ``d``."""
  return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _b(v):
  """``B v``: the transpose of ``_bt``."""
  return [v[0], v[1] - v[2] + v[3], v[2] + v[1] - v[0], -v[3]]


def _g(k):
  """``G k`` over the first axis of the 3-list ``k``."""
  return [k[0], 0.5 * (k[0] + k[1] + k[2]), 0.5 * (k[0] - k[1] + k[2]), k[2]]


def _gt(u):
  """``G^T u``: the transpose of ``_g``."""
  half = 0.5 * (u[1] + u[2])
  return [u[0] + half, 0.5 * (u[1] - u[2]), half + u[3]]


def _at(m):
  """``A^T m`` over the first axis of the 4-list ``m``."""
  return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _a(y):
  """``A y``: the transpose of ``_at``."""
  return [y[0], y[0] + y[1], y[0] - y[1], -y[1]]


def _input_tiles(x):
  """``[16, N*th*tw, C]``: ``B^T d B`` of every 4x4 window ``d`` at stride
  2 of ``x`` ``[N, 2*th + 2, 2*tw + 2, C]``."""
  th, tw = (x.shape[1] - 2) // 2, (x.shape[2] - 2) // 2
  rows = _bt([x[:, r:r + 2 * th:2] for r in range(4)])
  v = [t for row in rows for t in _bt([row[:, :, s:s + 2 * tw:2]
                                       for s in range(4)])]
  return jnp.stack(v).reshape(16, -1, x.shape[-1])


def _kernel_tiles(k):
  """``[16, C_in, C_out]``: ``G k G^T`` of the ``[3, 3, C_in, C_out]``
  kernel."""
  return jnp.stack([u for row in _g(list(k)) for u in _g(list(row))])


def _interleave(a, b, axis):
  """``a`` and ``b`` alternating along ``axis`` (``a`` first)."""
  s = jnp.stack([a, b], axis + 1)
  return s.reshape(s.shape[:axis] + (-1,) + s.shape[axis + 2:])


def _forward(x, k):
  n, hp, wp, _ = x.shape
  th, tw = (hp - 2) // 2, (wp - 2) // 2
  m = jax.lax.dot_general(_input_tiles(x), _kernel_tiles(k),
                          (((2,), (1,)), ((0,), (0,))))  # [16, T, O]
  m = m.reshape(4, 4, n, th, tw, -1)
  rows = [_at(list(r)) for r in _at(list(m))]  # [p][q]: [N, th, tw, O]
  y = [_interleave(rows[p][0], rows[p][1], 2) for p in range(2)]
  return _interleave(y[0], y[1], 1)


@jax.custom_vjp
def conv3x3(x: jax.Array, k: jax.Array) -> jax.Array:
  """VALID 3x3 stride-1 convolution, NHWC x HWIO -> NHWC.

  Args:
    x: ``[N, H + 2, W + 2, C_in]``, ``H`` and ``W`` even.
    k: ``[3, 3, C_in, C_out]``.
  Returns:
    ``[N, H, W, C_out]``, as ``lax.conv_general_dilated(x, k, (1, 1),
    'VALID')``.
  """
  return _forward(x, k)


def _fwd(x, k):
  return _forward(x, k), (x, k)


def _bwd(res, g):
  # The input and kernel tiles are recomputed rather than saved (the input
  # tiles are 4x the input's size): the residuals stay x and k, as for the
  # direct form.
  x, k = res
  n, hp, wp, c = x.shape
  th, tw = (hp - 2) // 2, (wp - 2) // 2
  # dM = A g A^T per 2x2 output block.
  rows = _a([g[:, p::2] for p in range(2)])
  dm = jnp.stack([t for row in rows
                  for t in _a([row[:, :, q::2] for q in range(2)])])
  dm = dm.reshape(16, n * th * tw, -1)
  dv = jax.lax.dot_general(dm, _kernel_tiles(k),
                           (((2,), (2,)), ((0,), (0,))))  # [16, T, C_in]
  du = jax.lax.dot_general(_input_tiles(x), dm,
                           (((1,), (1,)), ((0,), (0,))))  # [16, C_in, C_out]
  du = du.reshape(4, 4, c, -1)
  dk = jnp.stack([jnp.stack(_gt(list(col)))
                  for col in _gt(list(du))])  # [3, 3, C_in, C_out]
  # dx = B dV B^T per 4x4 window, windows overlapping by 2: input row
  # 2a + r gets window a's row r, for r and r + 2 of the windows a and a-1.
  dv = dv.reshape(4, 4, n, th, tw, c)
  place = lambda d, axis: [
      jax.lax.pad(d[p], jnp.zeros((), d[p].dtype),
                  [(0, 0, 0)] * axis + [(0, 1, 0)]
                  + [(0, 0, 0)] * (d[p].ndim - axis - 1))
      + jax.lax.pad(d[p + 2], jnp.zeros((), d[p].dtype),
                    [(0, 0, 0)] * axis + [(1, 0, 0)]
                    + [(0, 0, 0)] * (d[p].ndim - axis - 1))
      for p in range(2)]
  rows = place(_b(list(dv)), 2)  # [parity][4(s), N, th + 1, tw, C]
  dx_rows = _interleave(rows[0], rows[1], 2)  # [4, N, hp, tw, C]
  cols = place(_b(list(dx_rows)), 2)  # [parity][N, hp, tw + 1, C]
  dx = _interleave(cols[0], cols[1], 2)
  return dx.astype(x.dtype), dk.astype(k.dtype)


conv3x3.defvjp(_fwd, _bwd)


def applies(x_shape, kernel_shape, strides, padding, dilation, dtype) -> bool:
  """Whether ``conv3x3`` computes this convolution: 3x3, stride 1, no
  dilation, unpadded, even output size, float32."""
  return (tuple(kernel_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
          and tuple(dilation) == (1, 1) and padding == ((0, 0), (0, 0))
          and x_shape[1] % 2 == 0 and x_shape[2] % 2 == 0
          and x_shape[1] > 2 and x_shape[2] > 2 and dtype == jnp.float32)
