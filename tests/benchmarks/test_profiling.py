"""FLOP counting (benchmarks/profiling.py): hand-computed convolutions, matrix products and their
gradients."""

import os
import sys

import keras
import pytest
import tensorflow as tf

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks")
)
from profiling import count_flops  # noqa: E402


def test_matmul_and_transposes():
    spec_a = tf.TensorSpec([8, 5], tf.float32)
    spec_b = tf.TensorSpec([5, 3], tf.float32)
    assert count_flops(lambda a, b: tf.matmul(a, b), spec_a, spec_b)["total"] == 2 * 8 * 5 * 3
    spec_bt = tf.TensorSpec([3, 5], tf.float32)
    flops = count_flops(lambda a, b: tf.matmul(a, b, transpose_b=True), spec_a, spec_bt)
    assert flops == {"MatMul": 240, "total": 240, "ops": 1}
    batched = count_flops(
        lambda a, b: tf.matmul(a, b), tf.TensorSpec([4, 8, 5]), tf.TensorSpec([4, 5, 3])
    )
    assert batched["total"] == 4 * 2 * 8 * 5 * 3


def test_conv_strided_same_padding():
    x = tf.TensorSpec([2, 9, 9, 3], tf.float32)
    w = tf.TensorSpec([3, 3, 3, 4], tf.float32)
    flops = count_flops(lambda x, w: tf.nn.conv2d(x, w, 2, "SAME"), x, w)
    # output 5x5x4 an image, 27 multiply-adds an output element
    assert flops["Conv2D"] == 2 * 2 * 5 * 5 * 4 * 27


def test_depthwise_conv():
    x = tf.TensorSpec([1, 8, 8, 6], tf.float32)
    w = tf.TensorSpec([3, 3, 6, 2], tf.float32)
    flops = count_flops(lambda x, w: tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "VALID"), x, w)
    assert flops["total"] == 2 * 6 * 6 * 12 * 9


def test_gradient_counts_both_backward_products():
    conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)
    dense = keras.layers.Dense(7, use_bias=False)
    conv.build((None, 6, 6, 3))
    dense.build((None, 6 * 6 * 4))

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = dense(tf.reshape(conv(x), [2, -1]))
            loss = tf.reduce_sum(y)
        return tape.gradient(loss, [x, conv.kernel, dense.kernel])

    flops = count_flops(step, tf.TensorSpec([2, 6, 6, 3], tf.float32))
    conv_flops = 2 * 2 * 6 * 6 * 4 * 27
    dense_flops = 2 * 2 * 144 * 7
    assert flops["Conv2D"] == conv_flops
    assert flops["Conv2DBackpropInput"] == conv_flops
    assert flops["Conv2DBackpropFilter"] == conv_flops
    # forward, gradient w.r.t. the input and w.r.t. the kernel
    assert flops["MatMul"] == 3 * dense_flops
    assert flops["total"] == 3 * conv_flops + 3 * dense_flops


def test_model_flops_scale_with_batch():
    from tfrcnn import accel
    from tfrcnn.models import FasterRCNN

    model = FasterRCNN.from_preset("tiny", num_classes=3)

    def spec(b):
        return {
            "images": tf.TensorSpec([b, 160, 160, 3], tf.float32),
            "image_shape": tf.TensorSpec([b, 2], tf.int32),
            "image_scale": tf.TensorSpec([b], tf.float32),
            "original_shape": tf.TensorSpec([b, 2], tf.int32),
        }

    def infer(x):
        return model.inference_graph(x, training=False)

    # direct convolutions (as the benchmarks count): at batch 2 the tiny preset's 64-channel 3x3
    # convolutions have enough tiles for Winograd, which does fewer products
    with accel.disabled():
        one = count_flops(infer, spec(1))
        two = count_flops(infer, spec(2))
    assert one["total"] > 0 and two["total"] == 2 * one["total"]
    winograd = count_flops(infer, spec(2))
    assert winograd["BatchMatMulV2"] > 0 and winograd["total"] < two["total"]
    # the box head: two fc layers on test_post_nms_top_n ROIs of 7x7 pooled features, then the
    # class and box layers
    channels = model.backbone_model.outputs[0].shape[-1]
    head = model.test_post_nms_top_n * 2 * (7 * 7 * channels * 256 + 256 * 256 + 256 * 4 + 256 * 12)
    assert one["MatMul"] == head


def test_unknown_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="not fully defined"):
        count_flops(lambda a: tf.matmul(a, a, transpose_b=True), tf.TensorSpec([None, 4]))
