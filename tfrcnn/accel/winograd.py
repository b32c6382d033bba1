"""3x3 convolutions by Winograd's minimal filtering, F(4x4, 3x3), for float32 inference on a CPU.

A stride-1 3x3 convolution computes each 4x4 block of outputs from a 6x6 tile of the input. In
the transformed domain (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016)
that block costs 36 multiplications a (input, output) channel pair instead of 4 * 4 * 9 = 144:

    Y = A^T [ (G g G^T) . (B^T d B) ] A        (one tile, one channel pair; . elementwise)

with ``d`` the 6x6 input tile, ``g`` the 3x3 kernel, and ``B^T`` (6x6), ``G`` (6x3), ``A^T``
(4x6) the constant matrices of the interpolation points 0, 1, -1, 2, -2 and infinity. Summed over
the input channels, the elementwise products become 36 independent matrix products
``[tiles, C] @ [C, K]``: a quarter of the direct convolution's multiply-adds, plus the three
transforms, which only read and write memory.

:func:`winograd_conv3x3` is written with ordinary TensorFlow ops (strided slices and additions
for the input transform, the batched products, one small matrix product each for the kernel and
output transforms; maps of at least ``BAND_MIN_BYTES`` in bands of tile rows) and is meant to run
compiled by XLA (:func:`winograd_conv3x3_xla`), which fuses the input transform's additions into
its passes over memory. It pays off for wide channels on maps of many tiles
(:func:`winograd_pays_off`), and only with XLA. Accuracy: the transforms multiply by up to 8 and
divide by 24, so float32 results differ from the direct convolution by about 1e-5 of the
output's scale. Half types are never routed here; neither are GPUs.

Training steps use :func:`tfrcnn.accel.conv.winograd_conv2d`, whose input gradient is itself a
Winograd convolution (of ``dy`` with the flipped kernel) and whose filter gradient goes through
the same transform (:func:`winograd_filter_gradient`): ``dU[p] = V[p]^T (A dY A^T)[p]`` at each of
the 36 positions, one batched ``[C, tiles] @ [tiles, K]`` product, then ``dW = G^T dU G``.

Measurements and their command: docs/performance.md, "Winograd convolutions".
"""

import numpy as np
import tensorflow as tf

__all__ = [
    "winograd_conv3x3",
    "winograd_conv3x3_xla",
    "winograd_pays_off",
    "winograd_decision",
    "winograd_filter_gradient",
    "winograd_filter_gradient_xla",
    "winograd_filter_gradient_bands",
    "winograd_conv3x3_bands",
    "MIN_CHANNELS",
    "MIN_TILES",
    "BAND_MIN_BYTES",
    "BAND_BYTES",
    "GRADIENT_BAND_BYTES",
]

TILE = 4  # outputs a tile side
ALPHA = TILE + 2  # inputs a tile side

#: Input and output channels at least this many (narrower layers measured no faster).
MIN_CHANNELS = 64
#: Output tiles (``N * ceil(H/4) * ceil(W/4)``) at least this many (fewer measured slower than
#: the direct convolution).
MIN_TILES = 49

#: Inputs of at least this many bytes are convolved in bands of tile rows of about
#: :data:`BAND_BYTES` of input each, so that each band's input-transform passes read memory that
#: stays in the last-level cache.
BAND_MIN_BYTES = 32 * 2**20
BAND_BYTES = 6 * 2**20
#: The filter gradient of such inputs sums bands of about this many bytes of input, computed one
#: after the other (:func:`winograd_filter_gradient_bands`).
GRADIENT_BAND_BYTES = 12 * 2**20

# Interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray 2016, F(4x4, 3x3)).
_BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=np.float64,
)
_G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
_AT = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    dtype=np.float64,
)
# The transforms of a whole tile as one matrix: entry (6a + b, 3i + j) of kron(G, G) is
# G[a, i] * G[b, j], so kron(G, G) @ vec(g) = vec(G g G^T) (row-major vec); likewise for A^T.
_KRON_G = np.kron(_G, _G)  # [36, 9]
_KRON_AT = np.kron(_AT, _AT)  # [16, 36]


def _combine(coefficients, terms):
    """``sum(c * t)`` over the non-zero coefficients, without multiplying by +-1."""
    total = None
    for coefficient, term in zip(coefficients, terms):
        if coefficient == 0:
            continue
        if coefficient == 1:
            value = term
        elif coefficient == -1:
            value = -term
        else:
            value = term * float(coefficient)
        total = value if total is None else total + value
    return total


def _tiles(size):
    """Tiles along an axis of ``size`` pixels (a Python int or a scalar int32 tensor)."""
    return -(-size // TILE)


def _size(x, axis):
    """``x.shape[axis]`` where it is static, else that dimension as a scalar int32 tensor."""
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]


def input_transform(x):
    """``[N, H, W, C] -> [36, N * th * tw, C]``: ``B^T d B`` of every 6x6 tile (stride 4) of the
    input padded by one pixel (SAME padding) and up to whole tiles; row ``6 * i + j`` of the
    first axis is entry ``(i, j)`` of the transformed tile."""
    th, tw = _tiles(_size(x, 1)), _tiles(_size(x, 2))
    return _tile_transform(_pad_to_tiles(x), th, tw)


def _pad_to_tiles(x):
    """SAME padding by one pixel, then zeros up to whole tiles: ``[N, 4 th + 2, 4 tw + 2, C]``."""
    height, width = _size(x, 1), _size(x, 2)
    th, tw = _tiles(height), _tiles(width)
    return tf.pad(x, [[0, 0], [1, TILE * th + 1 - height], [1, TILE * tw + 1 - width], [0, 0]])


def _tile_transform(x, th, tw):
    """:func:`input_transform` of an input already padded to ``[N, 4 th + 2, 4 tw + 2, C]``.

    Separable, in two stacked passes: the six row combinations ``R[i] = sum_k B^T[i, k] x[4 I + k]``
    (``[6, N, th, 4 tw + 2, C]``, 1.5x the input), then the six column combinations of each. Stacking
    ``R`` makes XLA write it once instead of recomputing a row combination inside each of the 36
    outputs that use it."""
    channels = x.shape[3]
    rows = [x[:, k : k + TILE * th : TILE] for k in range(ALPHA)]  # [N, th, Wp, C] each
    combined = tf.stack([_combine(_BT[i], rows) for i in range(ALPHA)])  # [6, N, th, Wp, C]
    columns = [
        combined[:, :, :, k : k + TILE * tw : TILE] for k in range(ALPHA)
    ]  # [6, N, th, tw, C]
    transformed = tf.stack([_combine(_BT[j], columns) for j in range(ALPHA)], axis=1)
    return tf.reshape(transformed, [ALPHA * ALPHA, -1, channels])  # (i, j) -> 6 i + j


def _bands(x, band_bytes=None):
    """Tile-row ranges ``[(t0, t1), ...]`` covering the input: one range unless the input has at
    least :data:`BAND_MIN_BYTES`, then ranges of about ``band_bytes`` (default
    :data:`BAND_BYTES`) of input each, all of the same height but the last (one range where the
    height or width is unknown while tracing)."""
    band_bytes = BAND_BYTES if band_bytes is None else band_bytes
    batch, height, width, channels = x.shape
    if height is None or width is None:
        return [(0, _tiles(_size(x, 1)))]
    th = _tiles(height)
    size = (batch or 1) * height * width * channels * x.dtype.size
    if size < BAND_MIN_BYTES:
        return [(0, th)]
    count = min(th, -(-size // band_bytes))
    per = -(-th // count)
    return [(t0, min(th, t0 + per)) for t0 in range(0, th, per)]


def kernel_transform(kernel):
    """``[3, 3, C, K] -> [36, C, K]``: ``G g G^T`` for every channel pair, as one matrix product
    ``kron(G, G) @ g`` (``[36, 9] @ [9, C * K]``; faster under XLA than two contractions)."""
    channels, filters = kernel.shape[2], kernel.shape[3]
    flat = tf.reshape(kernel, [9, -1])
    transformed = tf.linalg.matmul(tf.constant(_KRON_G, kernel.dtype), flat)
    return tf.reshape(transformed, [ALPHA * ALPHA, channels, filters])


def output_transform(products, batch, height, width):
    """``[36, N * th * tw, K] -> [N, H, W, K]``: ``A^T M A`` of every tile, the 4x4 blocks put
    back in place and the padding rows and columns dropped.

    One matrix product ``kron(A^T, A^T) @ M`` (``[16, 36] @ [36, tiles * K]``) and one transpose
    that interleaves the blocks (faster under XLA than the elementwise form)."""
    th, tw = _tiles(height), _tiles(width)
    filters = products.shape[-1]
    blocks = tf.linalg.matmul(
        tf.constant(_KRON_AT, products.dtype), tf.reshape(products, [ALPHA * ALPHA, -1])
    )
    blocks = tf.reshape(blocks, [TILE, TILE, batch, th, tw, filters])  # (a, b, n, I, J, k)
    y = tf.transpose(blocks, [2, 3, 0, 4, 1, 5])  # (n, I, a, J, b, k)
    y = tf.reshape(y, [batch, TILE * th, TILE * tw, filters])
    return y[:, :height, :width]


def output_transform_adjoint(dy):
    """``[N, H, W, K] -> [36, N * th * tw, K]``: ``A dY A^T`` of every 4x4 block ``dY`` of ``dy``
    (padded with zeros up to whole tiles), in :func:`input_transform`'s tile order: the gradient of
    :func:`output_transform` (which maps ``M`` to ``A^T M A`` and crops)."""
    height, width, filters = dy.shape[1], dy.shape[2], dy.shape[3]
    th, tw = _tiles(height), _tiles(width)
    dy = tf.pad(dy, [[0, 0], [0, TILE * th - height], [0, TILE * tw - width], [0, 0]])
    # separable in two stacked passes, as _tile_transform
    rows = [dy[:, a::TILE] for a in range(TILE)]  # [N, th, 4 * tw, K] each
    combined = tf.stack([_combine(_AT[:, i], rows) for i in range(ALPHA)])  # [6, N, th, 4 tw, K]
    columns = [combined[:, :, :, b::TILE] for b in range(TILE)]  # [6, N, th, tw, K]
    transformed = tf.stack([_combine(_AT[:, j], columns) for j in range(ALPHA)], axis=1)
    return tf.reshape(transformed, [ALPHA * ALPHA, -1, filters])


def winograd_filter_gradient(x, dy):
    """The filter gradient of :func:`winograd_conv3x3` (= of the SAME 3x3 stride-1 convolution):
    ``[3, 3, C, K]``, ``dW = d(sum(conv(x, W) * dy)) / dW``, through the transform.

    With ``V = B^T d B`` the transformed input tiles and ``dM = A dY A^T`` the transformed blocks
    of ``dy``, the gradient of ``U = G g G^T`` at each of the 36 positions is one matrix product
    ``dU[p] = V[p]^T dM[p]`` (``[C, tiles] @ [tiles, K]``) and ``dW = G^T dU G``: ``36 / 16`` multiply-
    adds a pixel and channel pair instead of the direct gradient's 9.

    Args:
        x: ``[N, H, W, C]`` float tensor, static ``H``, ``W``, ``C``.
        dy: ``[N, H, W, K]``, the upstream gradient, ``x``'s dtype, static ``H``, ``W``, ``K``.
    """
    x = tf.convert_to_tensor(x)
    dy = tf.convert_to_tensor(dy, dtype=x.dtype)
    if (
        x.shape.rank != 4
        or dy.shape.rank != 4
        or None in x.shape[1:]
        or None in dy.shape[1:]
        or tuple(x.shape[1:3]) != tuple(dy.shape[1:3])
    ):
        raise ValueError(
            f"winograd_filter_gradient needs x [N, H, W, C] and dy [N, H, W, K] with "
            f"the same static H, W, got {x.shape} and {dy.shape}"
        )
    channels, filters = x.shape[3], dy.shape[3]
    products = tf.linalg.matmul(input_transform(x), output_transform_adjoint(dy), transpose_a=True)
    return _filter_from_products(products, channels, filters)


def _filter_from_products(products, channels, filters):
    """``dW = G^T dU G`` at every channel pair: ``kron(G, G)^T @ dU``, ``[9, 36] @ [36, C * K]``."""
    gradient = tf.linalg.matmul(
        tf.constant(_KRON_G, products.dtype),
        tf.reshape(products, [ALPHA * ALPHA, -1]),
        transpose_a=True,
    )
    return tf.reshape(gradient, [3, 3, channels, filters])


#: :func:`winograd_filter_gradient` compiled by XLA (once an input shape).
winograd_filter_gradient_xla = tf.function(winograd_filter_gradient, jit_compile=True)


@tf.function(jit_compile=True)
def _band_products(x, dy, band, rows):
    """``dU`` of tile rows ``[band * rows, (band + 1) * rows)`` of ``x``, ``dy``: ``[36, C, K]``.
    ``rows`` is a Python int, ``band`` a scalar int32 tensor (one compilation for every band);
    tile rows past the map are zeros in both and add nothing."""
    height, width, channels, filters = x.shape[1], x.shape[2], x.shape[3], dy.shape[3]
    th, tw = _tiles(height), _tiles(width)
    total = TILE * rows * -(-th // rows)
    x = tf.pad(x, [[0, 0], [1, total + 1 - height], [1, TILE * tw + 1 - width], [0, 0]])
    dy = tf.pad(dy, [[0, 0], [0, total - height], [0, TILE * tw - width], [0, 0]])
    start = TILE * rows * band
    x = tf.slice(x, [0, start, 0, 0], [-1, TILE * rows + 2, -1, -1])
    dy = tf.slice(dy, [0, start, 0, 0], [-1, TILE * rows, -1, -1])
    x = tf.reshape(x, [-1, TILE * rows + 2, TILE * tw + 2, channels])
    dy = tf.reshape(dy, [-1, TILE * rows, TILE * tw, filters])
    return tf.linalg.matmul(
        _tile_transform(x, rows, tw), output_transform_adjoint(dy), transpose_a=True
    )


def winograd_filter_gradient_bands(x, dy):
    """:func:`winograd_filter_gradient_xla`, for inputs of at least :data:`BAND_MIN_BYTES` as the
    sum of bands of tile rows of about :data:`GRADIENT_BAND_BYTES` of input each, one XLA call a
    band, one after the other: the transformed tiles of one band are alive at a time (the whole
    map's are about 4.5x the input and ``dy``). Same arguments and result, up to the order of the
    float sums."""
    x = tf.convert_to_tensor(x)
    dy = tf.convert_to_tensor(dy, dtype=x.dtype)
    static = None not in x.shape[1:] and None not in dy.shape[1:]
    bands = _bands(x, GRADIENT_BAND_BYTES) if static else []
    if len(bands) < 2:
        return winograd_filter_gradient_xla(x, dy)
    rows = bands[0][1] - bands[0][0]
    products = None
    for band in range(len(bands)):
        with tf.control_dependencies([] if products is None else [products]):
            part = _band_products(x, dy, tf.constant(band, tf.int32), rows)
        products = part if products is None else products + part
    return _filter_from_products(products, x.shape[3], dy.shape[3])


def winograd_conv3x3(x, kernel, bias=None, relu=False):
    """``tf.nn.conv2d(x, kernel, 1, "SAME")`` for a 3x3 kernel, by F(4x4, 3x3), optionally
    followed by ``+ bias`` and ``relu`` (in the same XLA computation under
    :func:`winograd_conv3x3_xla`, so the output is written once instead of three times).

    Args:
        x: ``[N, H, W, C]`` float tensor; ``C`` static; ``N``, ``H``, ``W`` may be unknown while
            tracing (XLA compiles the function for the actual sizes).
        kernel: ``[3, 3, C, K]`` of ``x``'s dtype.
        bias: optional ``[K]`` of ``x``'s dtype, added to every output pixel.
        relu: Python bool, ``max(y, 0)`` last.

    Returns:
        ``[N, H, W, K]``, equal to the direct convolution up to float rounding (see the module
        docstring).
    """
    x = tf.convert_to_tensor(x)
    kernel = tf.convert_to_tensor(kernel, dtype=x.dtype)
    if x.shape.rank != 4 or x.shape[3] is None:
        raise ValueError(f"winograd_conv3x3 needs x [N, H, W, C] with static C, got {x.shape}")
    if tuple(kernel.shape[:3]) != (3, 3, x.shape[3]):
        raise ValueError(
            f"winograd_conv3x3 needs a [3, 3, {x.shape[3]}, K] kernel, got {kernel.shape}"
        )
    batch, height, width = _size(x, 0), _size(x, 1), _size(x, 2)
    tw = _tiles(width)
    transformed_kernel = kernel_transform(kernel)
    padded = _pad_to_tiles(x)
    blocks = []
    for t0, t1 in _bands(x):  # large maps: bands of tile rows (see BAND_MIN_BYTES)
        products = tf.linalg.matmul(
            _tile_transform(padded[:, TILE * t0 : TILE * t1 + 2], t1 - t0, tw), transformed_kernel
        )
        blocks.append(output_transform(products, batch, TILE * (t1 - t0), width))
    y = blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=1)
    y = y[:, :height]
    if bias is not None:
        bias = tf.convert_to_tensor(bias, dtype=x.dtype)
        if tuple(bias.shape) != (kernel.shape[3],):
            raise ValueError(
                f"winograd_conv3x3 needs a bias of shape [{kernel.shape[3]}], got {bias.shape}"
            )
        y = tf.nn.bias_add(y, bias)
    if relu:
        y = tf.nn.relu(y)
    return y


@tf.function(jit_compile=True)
def _band_convolution(x, kernel, band, rows):
    """Output rows ``[4 rows band, 4 rows (band + 1))`` of :func:`winograd_conv3x3` (rows past the
    map are computed from zeros): ``[N, 4 rows, W, K]``. ``rows`` (tile rows a band) is a Python
    int, ``band`` a scalar int32 tensor (one compilation for every band)."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    th, tw = _tiles(height), _tiles(width)
    total = TILE * rows * -(-th // rows)
    x = tf.pad(x, [[0, 0], [1, total + 1 - height], [1, TILE * tw + 1 - width], [0, 0]])
    x = tf.slice(x, [0, TILE * rows * band, 0, 0], [-1, TILE * rows + 2, -1, -1])
    x = tf.reshape(x, [-1, TILE * rows + 2, TILE * tw + 2, channels])
    products = tf.linalg.matmul(_tile_transform(x, rows, tw), kernel_transform(kernel))
    return output_transform(products, tf.shape(x)[0], TILE * rows, width)


def winograd_conv3x3_bands(x, kernel):
    """:func:`winograd_conv3x3_xla` without bias or relu; for inputs of at least
    :data:`BAND_MIN_BYTES` with static height and width, one XLA call a band of about
    :data:`BAND_BYTES` of input, one after the other, so that one band's transformed tiles and
    products are alive at a time (XLA keeps those of every band of one computation), then the
    bands' outputs concatenated. Same result."""
    x = tf.convert_to_tensor(x)
    kernel = tf.convert_to_tensor(kernel, dtype=x.dtype)
    bands = _bands(x) if None not in x.shape[1:] else []
    if len(bands) < 2:
        return winograd_conv3x3_xla(x, kernel)
    rows = bands[0][1] - bands[0][0]
    outputs = []
    for band in range(len(bands)):
        with tf.control_dependencies(outputs[-1:]):
            outputs.append(_band_convolution(x, kernel, tf.constant(band, tf.int32), rows))
    # the last band cropped to the map (not the whole output after the concatenation)
    outputs[-1] = outputs[-1][:, : x.shape[1] - TILE * rows * (len(bands) - 1)]
    return tf.concat(outputs, axis=1)


# Two compiled functions: a trace for unknown map sizes (a serving signature) would otherwise
# also serve later calls on static shapes, whose trace then loses its static shapes.
_compiled_static = tf.function(winograd_conv3x3, jit_compile=True)
_compiled_dynamic = tf.function(winograd_conv3x3, jit_compile=True)


def winograd_conv3x3_xla(x, kernel, bias=None, relu=False):
    """:func:`winograd_conv3x3` compiled by XLA (once an input shape; same arguments)."""
    shape = tf.TensorShape(x.shape)
    static = shape.rank == 4 and None not in shape[1:3]
    compiled = _compiled_static if static else _compiled_dynamic
    return compiled(x, kernel, bias, relu)


def winograd_decision(x, filters):
    """:func:`winograd_pays_off` for a tensor ``x`` ``[N, H, W, C]`` (static ``C``): a Python
    bool where the shape is static; where the batch, height or width are unknown while tracing,
    False if the channel rule already fails, else a scalar bool tensor that decides when the
    computation runs (for ``tf.cond``)."""
    channels = x.shape[3]
    if channels is None or min(channels, filters) < MIN_CHANNELS:
        return False
    if None not in x.shape[1:3]:
        return winograd_pays_off(tuple(x.shape), filters)
    shape = tf.shape(x)
    tiles = shape[0] * _tiles(shape[1]) * _tiles(shape[2])
    return tiles >= MIN_TILES


def winograd_pays_off(input_shape, filters):
    """Whether F(4x4, 3x3) measured faster than the direct convolution for an input shape
    ``[N, H, W, C]`` (static ``H``, ``W``, ``C``; unknown ``N`` counts as 1, a static empty batch
    never pays off) and ``filters`` output channels: both channel counts at least
    :data:`MIN_CHANNELS` and at least :data:`MIN_TILES` output tiles."""
    batch, height, width, channels = input_shape
    if height is None or width is None or channels is None:
        return False
    tiles = (1 if batch is None else batch) * _tiles(height) * _tiles(width)
    return min(channels, filters) >= MIN_CHANNELS and tiles >= MIN_TILES
