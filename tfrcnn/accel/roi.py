"""ROI Align with XLA-compiled kernels on CPUs.

:func:`tfrcnn.ops.roi.roi_align` and :func:`tfrcnn.ops.roi.multilevel_roi_align` take their
interpolation kernels as an argument; here they get the same functions compiled by XLA. The
compiled forward (``gather_from_levels``) writes only the ``[K, oh, ow, C]`` bins straight from
the maps, where ``crop_and_resize`` writes all ``[K, oh * sr, ow * sr, C]`` samples of an
edge-padded canvas, masks them and average-pools them; the compiled gradient
(``bilinear_scatter``) fuses the ``4 sr**2`` weighted copies of the upstream gradient into its
scatter-add instead of writing them out. Same numbers up to float rounding.
"""

import tensorflow as tf

from tfrcnn.accel.state import is_disabled, sees_a_gpu
from tfrcnn.ops import roi as reference

__all__ = ["COMPILED_KERNELS", "kernels", "roi_align", "multilevel_roi_align"]

COMPILED_KERNELS = reference.ROIAlignKernels(
    *(tf.function(kernel, jit_compile=True) for kernel in reference.REFERENCE_KERNELS))


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
