"""The tiny preset learns: it overfits 8 synthetic images within a bounded number of steps."""

import keras

from tfrcnn.data import make_dataset, make_synthetic_records
from tfrcnn.evaluation import evaluate_model
from tfrcnn.models import FasterRCNN

STEPS = 300


def test_tiny_overfits_eight_images():
    keras.utils.set_random_seed(0)
    records = make_synthetic_records(8, seed=11, empty_fraction=0.0)
    common = dict(batch_size=4, min_side=160, max_side=192, pad_to=(192, 192), size_divisor=8)
    train = make_dataset(records, training=True, flip=False, seed=0, **common).repeat()
    model = FasterRCNN.from_preset("tiny", num_classes=3)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, STEPS - 20, alpha=0.1, warmup_target=3e-3, warmup_steps=20
    )
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4, clipnorm=10.0))
    model.fit(train, steps_per_epoch=STEPS, epochs=1, verbose=0)
    result = evaluate_model(model, make_dataset(records, training=False, **common), num_classes=3)
    assert result["mAP"] >= 0.95, result
