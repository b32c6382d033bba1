"""NaNGuard stops training at the first non-finite loss and names the step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.training import NaNGuard


def test_nan_guard_names_epoch_and_step():
    guard = NaNGuard()
    guard.set_model(keras.Sequential([keras.layers.Dense(1)]))
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 1.0, "rpn_cls_loss": 0.5})
    with pytest.raises(FloatingPointError, match=r"epoch 3, step 5: loss=nan, rpn_box_loss=inf"):
        guard.on_train_batch_end(
            4, {"loss": float("nan"), "rpn_box_loss": float("inf"), "rcnn_cls_loss": 0.3}
        )
    assert guard.model.stop_training


def test_nan_guard_stops_a_real_fit():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e30), loss="mse")
    x = np.full((64, 2), 1e20, "float32")
    y = np.ones((64, 1), "float32")
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 1, step"):
        model.fit(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
            epochs=3,
            callbacks=[NaNGuard()],
            verbose=0,
        )
