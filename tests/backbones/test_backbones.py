"""Backbones: shapes and strides for any input size, weights files, freezing, normalisation values.

Heavy networks (ResNet50, MobileNetV3) are built few times and run on tiny inputs only.
"""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.backbones import (
    BACKBONE_NAMES,
    BACKBONE_STRIDES,
    LocalResponseNormalization,
    backbone_channels,
    build_backbone,
    build_resnet50_c4,
    build_resnet50_c5_head,
    common,
)
from tfrcnn.backbones.mobilenet_v3 import STRIDE16_LAYER, build_mobilenet_v3_body
from tfrcnn.layers.preprocessing import ImageNormalization


def _images(h, w, batch=1, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(batch, h, w, 3)).astype("float32")


def _check_maps(maps, name, h, w, fpn_channels=256, batch=1):
    assert isinstance(maps, list), f"{name} must return a list"
    strides = BACKBONE_STRIDES[name]
    channels = backbone_channels(name, fpn_channels)
    assert len(maps) == len(strides) == len(channels)
    expected = [(batch, math.ceil(h / s), math.ceil(w / s), c) for s, c in zip(strides, channels)]
    assert [tuple(m.shape) for m in maps] == expected


# ----------------------------------------------------------------------------- ImageNormalization


def test_image_normalization_values_by_hand():
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], "float32")  # R, G, B
    caffe = np.asarray(ImageNormalization("caffe")(pixel))[0, 0, 0]
    np.testing.assert_allclose(caffe, [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)  # BGR
    torch = np.asarray(ImageNormalization("torch")(pixel))[0, 0, 0]
    np.testing.assert_allclose(
        torch,
        [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225],
        rtol=1e-5,
    )
    tf_mode = np.asarray(ImageNormalization("tf")(np.array([[[[0.0, 127.5, 255.0]]]], "float32")))
    np.testing.assert_allclose(tf_mode[0, 0, 0], [-1.0, 0.0, 1.0], atol=1e-6)


def test_image_normalization_uint8_float32_and_config():
    layer = ImageNormalization("caffe", name="norm")
    images = np.random.default_rng(1).integers(0, 256, size=(2, 3, 5, 3)).astype("uint8")
    out = layer(images)
    assert out.dtype == "float32" and tuple(out.shape) == (2, 3, 5, 3)
    np.testing.assert_allclose(
        np.asarray(out),
        keras.applications.vgg16.preprocess_input(images.astype("float32")),
        rtol=1e-6,
        atol=1e-4,
    )
    clone = ImageNormalization.from_config(layer.get_config())
    assert clone.mode == "caffe" and clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="mode"):
        ImageNormalization("bgr")


# ----------------------------------------------------------------------------- LRN (ZF)


def test_lrn_within_channel_by_hand():
    x = np.zeros((1, 3, 3, 1), "float32")
    x[0, 1, 1, 0] = 2.0
    x[0, 0, 0, 0] = 1.0
    lrn = LocalResponseNormalization(local_size=3, alpha=0.9, beta=0.5, bias=1.0)
    y = np.asarray(lrn(x))
    # Centre: window holds 2^2 and 1^2 -> mean 5/9. Corner: window (zero padded) the same two.
    np.testing.assert_allclose(y[0, 1, 1, 0], 2.0 / math.sqrt(1 + 0.9 * 5 / 9), rtol=1e-6)
    np.testing.assert_allclose(y[0, 0, 0, 0], 1.0 / math.sqrt(1 + 0.9 * 5 / 9), rtol=1e-6)
    assert y[0, 2, 2, 0] == 0.0


def test_lrn_across_channels_matches_tf_and_config_round_trip():
    x = np.random.default_rng(2).normal(size=(2, 4, 5, 7)).astype("float32")
    lrn = LocalResponseNormalization(5, alpha=1e-2, beta=0.75, bias=2.0, region="across_channels")
    expected = tf.nn.local_response_normalization(
        x, depth_radius=2, bias=2.0, alpha=1e-2 / 5, beta=0.75
    )
    np.testing.assert_allclose(np.asarray(lrn(x)), expected.numpy(), rtol=1e-5)
    assert LocalResponseNormalization.from_config(lrn.get_config()).get_config() == lrn.get_config()
    with pytest.raises(ValueError, match="odd"):
        LocalResponseNormalization(local_size=4)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", ["tiny", "zf", "vgg16"])
def test_single_map_backbones_any_size(name):
    model, strides = build_backbone(name)
    assert strides == BACKBONE_STRIDES[name]
    assert model.name == name and isinstance(model.layers[1], ImageNormalization)
    for h, w in ((64, 96), (65, 97)):
        _check_maps(model(_images(h, w)), name, h, w)


def test_vgg16_and_zf_give_38x50_for_600x800():
    for name, channels in (("vgg16", 512), ("zf", 256)):
        model, _ = build_backbone(name)
        assert model.compute_output_shape((1, 600, 800, 3)) == [(1, 38, 50, channels)]
        # Real forward passes with the same rounding as 600x800 (37.5 -> 38), kept small.
        _check_maps(model(_images(24, 32)), name, 24, 32)
        _check_maps(model(_images(40, 56)), name, 40, 56)


@pytest.mark.slow
def test_mobilenet_v3_fpn_shapes_weights_file_freezing_and_keras_round_trip(tmp_path):
    """One test, so the (slow to build) network is built only twice (and loaded once)."""
    model, strides = build_backbone("mobilenet_v3_fpn", fpn_channels=16)
    assert strides == (16, 32, 64)
    for h, w in ((64, 96), (65, 97)):
        _check_maps(model(_images(h, w)), "mobilenet_v3_fpn", h, w, fpn_channels=16)
    path = str(tmp_path / "mobilenet.weights.h5")
    model.save_weights(path)
    loaded, _ = build_backbone("mobilenet_v3_fpn", fpn_channels=16, weights=path, trainable=False)
    assert loaded.trainable_weights == []  # the FPN is frozen too
    images = _images(33, 47)
    for expected, got in zip(model(images), loaded(images)):
        np.testing.assert_array_equal(np.asarray(expected), np.asarray(got))
    _check_round_trip_inside_functional_model(model, tmp_path, images)


@pytest.mark.slow
def test_resnet50_backbones_any_size():
    c4, strides = build_backbone("resnet50_c4")
    assert strides == (16,)
    _check_maps(c4(_images(65, 97)), "resnet50_c4", 65, 97)
    fpn, strides = build_backbone("resnet50_fpn", fpn_channels=32, name_prefix="rpn")
    assert strides == (4, 8, 16, 32, 64) and fpn.name == "rpn_resnet50_fpn"
    for h, w in ((64, 96), (65, 97)):
        _check_maps(fpn(_images(h, w)), "resnet50_fpn", h, w, fpn_channels=32)


def test_unknown_backbone_raises():
    with pytest.raises(ValueError, match="Unknown backbone 'vgg19'"):
        build_backbone("vgg19")
    assert set(BACKBONE_NAMES) == set(BACKBONE_STRIDES)


# ----------------------------------------------------------------------------- trainable


def test_trainable_false_freezes_everything_batchnorm_included():
    model, _ = build_backbone("tiny", trainable=False)
    assert model.trainable_weights == [] and len(model.non_trainable_weights) > 0
    bn = model.get_layer("conv1_bn")
    before = np.asarray(bn.moving_mean).copy()
    model(_images(32, 32, batch=2), training=True)
    np.testing.assert_array_equal(np.asarray(bn.moving_mean), before)
    zf, _ = build_backbone("zf", trainable=False)
    assert zf.trainable_weights == []
    trainable, _ = build_backbone("tiny")
    assert len(trainable.trainable_weights) == 18  # 6 convs + 6 BN gamma/beta


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("name", ["tiny", "zf"])
def test_weights_file_round_trip(tmp_path, name):
    model, _ = build_backbone(name, fpn_channels=16)
    path = str(tmp_path / f"{name}.weights.h5")
    model.save_weights(path)
    images = _images(33, 47)
    expected = [np.asarray(m) for m in model(images)]
    loaded, _ = build_backbone(name, weights=path, fpn_channels=16)
    fresh, _ = build_backbone(name, fpn_channels=16)
    got = [np.asarray(m) for m in loaded(images)]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)
    assert not np.allclose(np.asarray(fresh(images)[0]), expected[0])


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_weights_file_of_another_network_raises(tmp_path):
    path = str(tmp_path / "tiny.weights.h5")
    build_backbone("tiny")[0].save_weights(path)
    with pytest.raises(ValueError, match="same backbone"):
        build_backbone("zf", weights=path)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense_x")])
    legacy = str(tmp_path / "other.h5")
    other.save(legacy)
    with pytest.raises(ValueError, match="lacks 5 of the 5 layers"):
        build_backbone("zf", weights=legacy)


def test_bad_weights_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        build_backbone("tiny", weights=str(tmp_path / "missing.h5"))
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"0")
    with pytest.raises(ValueError, match="unsupported extension"):
        build_backbone("tiny", weights=str(odd))
    with pytest.raises(ValueError, match="must be None, 'imagenet' or a path"):
        build_backbone("tiny", weights=3)


def test_imagenet_absent_from_cache_downloads_or_says_offline(tmp_path, monkeypatch):
    """Absent from the cache, "imagenet" is downloaded (tests/weights/test_download.py serves it
    from 127.0.0.1); offline (a closed port here), one line says what to do."""
    import socket

    from tfrcnn.weights.download import DownloadError

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert common.keras_cache_dirs()[0] == os.path.join(str(tmp_path), "models")
    monkeypatch.setattr(common, "keras_cache_dirs", lambda: [str(tmp_path / "models")])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TFRCNN_WEIGHTS_BASE_URL", f"http://127.0.0.1:{port}/")
    for name in ("vgg16", "resnet50_c4", "resnet50_fpn", "mobilenet_v3_fpn"):
        with pytest.raises(
            DownloadError, match="no network: download .* or pass backbone_weights=PATH"
        ):
            build_backbone(name, weights="imagenet")
    with pytest.raises(DownloadError, match="no network"):
        build_resnet50_c5_head(weights="imagenet")
    for name in ("zf", "tiny"):
        with pytest.raises(ValueError, match="no keras.applications ImageNet weights"):
            build_backbone(name, weights="imagenet")
    assert not (tmp_path / "models").exists() or os.listdir(tmp_path / "models") == []


@pytest.mark.slow
def test_vgg16_loads_a_keras_applications_h5_file_by_name(tmp_path, monkeypatch):
    """A keras.applications VGG16 `.h5` loads by name; "imagenet" finds it in the Keras cache."""
    reference = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    cache = tmp_path / "models"
    cache.mkdir()
    path = str(cache / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    reference.save(path)  # the legacy HDF5 layout of the downloadable ImageNet files
    monkeypatch.setattr(common, "keras_cache_dirs", lambda: [str(cache)])
    images = _images(64, 64)  # a multiple of 32: floor and ceil pooling agree
    conv5_3 = keras.Model(reference.input, reference.get_layer("block5_conv3").output)
    expected = np.asarray(conv5_3(keras.applications.vgg16.preprocess_input(images.copy())))
    for weights in (path, "imagenet"):
        model, _ = build_backbone("vgg16", weights=weights)
        np.testing.assert_allclose(np.asarray(model(images)[0]), expected, rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- ResNet / MobileNet


def _copy_by_name(source, target_layers):
    copied = 0
    for layer in target_layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
            copied += 1
    return copied


@pytest.mark.slow
def test_resnet50_c4_and_c5_head_match_keras_applications():
    reference = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    c4, _ = build_resnet50_c4()
    head = build_resnet50_c5_head(name="box_head")
    assert _copy_by_name(reference, c4.layers) == 2 + (3 + 4 + 6) * 6 + 3 * 2  # + shortcuts
    assert _copy_by_name(reference, head.layers) == 3 * 6 + 2
    images = _images(64, 64)
    x = keras.applications.resnet50.preprocess_input(images.copy())
    ref_c4 = keras.Model(reference.input, reference.get_layer("conv4_block6_out").output)(x)
    got_c4 = c4(images)[0]
    np.testing.assert_allclose(np.asarray(got_c4), np.asarray(ref_c4), rtol=1e-4, atol=1e-4)
    rois = np.random.default_rng(3).normal(size=(3, 14, 14, 1024)).astype("float32")
    head_out = np.asarray(head(rois))
    assert head_out.shape == (3, 2048) and head.name == "box_head"
    conv5 = keras.Model(reference.get_layer("conv5_block1_1_conv").input, reference.output)
    np.testing.assert_allclose(
        head_out, np.asarray(conv5(rois)).mean(axis=(1, 2)), rtol=1e-4, atol=1e-4
    )
    # The head has its own variables: nothing shared with the backbone.
    assert not {id(v) for v in head.weights} & {id(v) for v in c4.weights}
    frozen = build_resnet50_c5_head(trainable=False)
    assert frozen.trainable_weights == []


@pytest.mark.slow
def test_mobilenet_body_matches_keras_applications_on_even_sizes():
    reference = keras.applications.MobileNetV3Large(
        include_top=False, weights=None, include_preprocessing=False, input_shape=(None, None, 3)
    )
    body = build_mobilenet_v3_body()
    assert _copy_by_name(reference, body.layers) == len(
        [layer for layer in reference.layers if layer.weights]
    )
    x = np.random.default_rng(4).uniform(-1, 1, size=(1, 64, 96, 3)).astype("float32")
    ref = keras.Model(
        reference.input, [reference.get_layer(STRIDE16_LAYER).output, reference.output]
    )
    for got, expected in zip(body(x), ref(x)):
        assert got.shape == expected.shape
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------- inside a larger model


def _check_round_trip_inside_functional_model(backbone, tmp_path, data):
    images = keras.Input((None, None, 3))
    maps = backbone(images)
    assert isinstance(maps, list)
    heads = [keras.layers.Conv2D(2, 1, name=f"head_{i}")(m) for i, m in enumerate(maps)]
    model = keras.Model(images, heads)
    expected = keras.tree.flatten(model(data))  # a plain model returns a bare tensor for one output
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    got = keras.tree.flatten(restored(data))
    assert len(got) == len(expected) == len(maps)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(np.asarray(e), np.asarray(g))


def test_tiny_inside_a_functional_model_survives_keras_round_trip(tmp_path):
    backbone, _ = build_backbone("tiny", name_prefix="det")
    _check_round_trip_inside_functional_model(backbone, tmp_path, _images(37, 45))


def test_two_backbones_with_prefixes_in_one_model():
    images = keras.Input((None, None, 3))
    first, _ = build_backbone("tiny", name_prefix="a")
    second, _ = build_backbone("tiny", name_prefix="b")
    model = keras.Model(images, [first(images)[0], second(images)[0]])
    assert {layer.name for layer in model.layers} >= {"a_tiny", "b_tiny"}
    assert [tuple(o.shape) for o in model(_images(16, 24))] == [(1, 2, 3, 128)] * 2


@pytest.mark.parametrize("accelerated", [False, True])
def test_resnet50_fpn_recomputed_stages_give_the_plain_gradients(accelerated):
    """resnet50_fpn computes the stem, conv2 and conv3 again in the backward pass of a training
    step: loss, weight and image gradients and the moving statistics equal those of the same
    network without recomputation (the same ops on the same inputs), plain and accelerated,
    within 1e-6 of the largest gradient (the biases of convolutions before a training-mode batch
    norm have gradient 0 in exact arithmetic: their values are float rounding)."""
    from tfrcnn import accel

    keras.utils.set_random_seed(0)
    model, _ = build_backbone("resnet50_fpn", fpn_channels=16)
    if accelerated:
        accel.apply(model)
    images = tf.constant(_images(48, 64, batch=2))
    start = [v.numpy() for v in model.variables]

    def step(cuts):
        for variable, value in zip(model.variables, start):
            variable.assign(value)
        model.recompute_until(*cuts)

        @tf.function
        def run(images):
            with tf.GradientTape() as tape:
                tape.watch(images)
                maps = model(images, training=True)
                loss = tf.add_n([tf.reduce_sum(tf.sin(m)) for m in maps])
            return loss, tape.gradient(loss, [images, *model.trainable_variables])

        loss, gradients = run(images)
        return loss.numpy(), gradients, [v.numpy() for v in model.non_trainable_variables]

    plain = step(())
    recomputed = step(("conv2_block3_out", "conv3_block4_out"))
    assert recomputed[0] == pytest.approx(plain[0], rel=1e-6)
    scale = max(np.abs(g).max() for g in plain[1])
    for got, expected in zip(recomputed[1], plain[1]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale)
    for got, expected in zip(recomputed[2], plain[2]):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    model.recompute_until("conv2_block3_out", "conv3_block4_out")  # the builder's setting
