"""ROI Align with XLA-compiled kernels on CPUs.

:func:`tfrcnn.ops.roi.roi_align` and :func:`tfrcnn.ops.roi.multilevel_roi_align` take their
interpolation kernels as an argument; here they get the same functions compiled by XLA. The
compiled forward (``gather_from_levels``) writes only the ``[K, oh, ow, C]`` bins straight from
the maps, where ``crop_and_resize`` writes all ``[K, oh * sr, ow * sr, C]`` samples of an
edge-padded canvas, masks them and average-pools them; the compiled gradient
(:func:`bilinear_scatter_in_place`) adds the ``4 sr**2`` weighted copies of the upstream gradient
into the table one at a time, so one copy is alive at a time. Same numbers up to float rounding.
"""

import tensorflow as tf

from tfrcnn.accel.state import is_disabled, sees_a_gpu
from tfrcnn.ops import roi as reference

__all__ = [
    "COMPILED_KERNELS",
    "bilinear_scatter_in_place",
    "kernels",
    "roi_align",
    "multilevel_roi_align",
]


def bilinear_scatter_in_place(upstream, row0, row1, col0, col1, ly, lx, wy, wx, cells, sr):
    """:func:`tfrcnn.ops.roi._bilinear_scatter` (same arguments, same ``[cells, C]`` result) with
    its ``4 sr**2`` terms added into the table one after another in a loop: under XLA each term is
    one weighted ``[K * oh * ow, C]`` copy of ``upstream`` scatter-added in place, and the loop
    keeps one copy alive, where the reference's single scatter-add takes all of them at once (for
    ``resnet50_fpn`` at batch 2, 1024 ROIs of 256 channels: 16 copies of 49 MB; docs/performance.md, "Training memory")."""
    channels = tf.shape(upstream)[-1]
    weights, indices = reference._scatter_terms(row0, row1, col0, col1, ly, lx, wy, wx, sr)

    def add_term(term, table):
        update = tf.reshape(upstream * weights[term][..., None], [-1, channels])
        return term + 1, tf.tensor_scatter_nd_add(table, tf.reshape(indices[term], [-1, 1]), update)

    _, table = tf.while_loop(
        lambda term, _: term < 4 * sr * sr,
        add_term,
        (tf.constant(0), tf.zeros(tf.stack([cells, channels]), upstream.dtype)),
    )
    return table


COMPILED_KERNELS = reference.ROIAlignKernels(
    tf.function(reference.REFERENCE_KERNELS.gather_from_levels, jit_compile=True),
    tf.function(bilinear_scatter_in_place, jit_compile=True),
)


def kernels():
    """The kernels an accelerated ROI Align uses here: the compiled ones on a machine without a
    GPU (whose ``crop_and_resize`` kernel is fast) outside :func:`tfrcnn.accel.disabled`, else
    None (the reference)."""
    return None if is_disabled() or sees_a_gpu() else COMPILED_KERNELS


def roi_align(*args, **kwargs):
    """:func:`tfrcnn.ops.roi.roi_align` with :func:`kernels` (same arguments and results)."""
    return reference.roi_align(*args, kernels=kernels(), **kwargs)


def multilevel_roi_align(*args, **kwargs):
    """:func:`tfrcnn.ops.roi.multilevel_roi_align` with :func:`kernels`."""
    return reference.multilevel_roi_align(*args, kernels=kernels(), **kwargs)
