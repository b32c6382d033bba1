"""Train torchvision's Faster R-CNN on a Pascal VOC folder; run as a script in its own process
(torch only, no TensorFlow).

    python tests/weights/torchvision_train.py VOC_ROOT OUTDIR --classes A,B,C
        [--arch fasterrcnn_mobilenet_v3_large_fpn] [--min-size 256] [--max-size 320]
        [--steps 300] [--frozen-bn-steps 150] [--batch-size 2] [--learning-rate 1e-3] [--seed 0]
        [--rois-per-image 32] [--positive-fraction 0.5] [--proposals 600] [--log-every N]

reads ``VOC_ROOT/ImageSets/Main/train.txt`` and ``val.txt``, ``Annotations/<id>.xml`` (parsed here
with ``xml.etree``) and the image each XML's ``<filename>`` names in ``JPEGImages/``; builds
torchvision's ``ARCH(weights=None, weights_backbone=None, num_classes=len(classes) + 1,
min_size=..., max_size=...)`` (label ``k + 1`` is ``classes[k]``, 0 is background; without
pretrained weights every layer trains and batch norm is ``BatchNorm2d``, updating its statistics);
trains it from the seed with AdamW (weight decay 1e-4; the learning rate warms up linearly over the
first tenth of the steps, then decays along a cosine to 0; gradients clipped to norm 10) on batches
of training images, each flipped left-right with probability 1/2. For the last
``--frozen-bn-steps`` steps batch norm is frozen (normalised with its running statistics, which
stop updating, as in evaluation; its scale and shift still train), so the model ends up trained
with the normalisation it is evaluated with: with batches of two images, per-batch statistics
differ enough from the running ones that a model trained on them alone detects worse in
evaluation than in training. ``--rois-per-image``,
``--positive-fraction`` and ``--proposals`` are torchvision's training-only
``box_batch_size_per_image``, ``box_positive_fraction`` and ``rpn_pre/post_nms_top_n_train``
(fewer ROIs, more of them foreground, for a short run); evaluation uses torchvision's defaults.
Then it writes

- ``OUTDIR/model.pth``: ``{"model": state_dict}`` (what ``tfrcnn import-weights`` reads);
- ``OUTDIR/detections.npz``: for each validation image ``i`` (in ``val.txt`` order), its id
  ``img{i}_id`` and the eval-mode detections ``img{i}_boxes`` (x1, y1, x2, y2 original pixels),
  ``img{i}_scores``, ``img{i}_labels`` (1 .. K); ``num_images``; ``losses`` (the summed training
  loss of every step), ``train_seconds`` and ``train_cpu_seconds``.

The images reach torchvision as float RGB in [0, 1] made from their uint8 pixels (one image a
forward pass in evaluation). Training uses one generator for every random choice and
``torch.use_deterministic_algorithms``, so a seed gives the same model on the same machine.
"""

import argparse
import math
import os
import time
import xml.etree.ElementTree as ET

import numpy as np

# OpenMP threads that spin while they wait stall for seconds on a machine whose cores are shared
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.models import detection  # noqa: E402


def read_split(root, split, classes):
    """``[(image_id, uint8 [H, W, 3], float32 [N, 4] x1 y1 x2 y2 pixels, int64 [N] labels)]``.

    VOC corners are 1-based inclusive, so ``xmin = 1, xmax = 10`` covers pixels 0..9, the
    continuous box ``[0, 10]``: ``x1 = xmin - 1``, ``x2 = xmax`` (the same for y).
    """
    with open(os.path.join(root, "ImageSets", "Main", split + ".txt")) as f:
        ids = [line.strip() for line in f if line.strip()]
    out = []
    for image_id in ids:
        tree = ET.parse(os.path.join(root, "Annotations", image_id + ".xml")).getroot()
        filename = tree.findtext("filename")
        image = np.asarray(Image.open(os.path.join(root, "JPEGImages", filename)).convert("RGB"))
        boxes, labels = [], []
        for obj in tree.iter("object"):
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (
                float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            boxes.append([xmin - 1, ymin - 1, xmax, ymax])
            labels.append(classes.index(obj.findtext("name")) + 1)
        out.append(
            (
                image_id,
                image,
                np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray(labels, np.int64).reshape(-1),
            )
        )
    return out


def to_tensor(image):
    """uint8 HWC -> float CHW in [0, 1]."""
    return torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1).float() / 255.0


def example(image, boxes, labels, flip):
    """One training input and target, flipped left-right when ``flip``."""
    if flip:
        width = image.shape[1]
        image = image[:, ::-1]
        boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
        boxes = boxes.reshape(-1, 4)
    target = {
        "boxes": torch.from_numpy(boxes.astype(np.float32)),
        "labels": torch.from_numpy(labels),
    }
    return to_tensor(image), target


def learning_rate(step, steps, peak, warmup):
    """A linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def freeze_batch_norm(model):
    """Batch norm in inference mode: normalised with its running statistics, which stay fixed
    (the scale and shift still train)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()


def train(model, records, steps, batch_size, peak_lr, generator, frozen_bn_steps=0, log_every=0):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=peak_lr, weight_decay=1e-4, fused=True)
    warmup = max(1, steps // 10)
    model.train()
    order = []
    losses = []
    for step in range(steps):
        if step == steps - frozen_bn_steps:
            freeze_batch_norm(model)
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = torch.randperm(len(records), generator=generator).tolist()
            batch.append(order.pop())
        flips = torch.rand(batch_size, generator=generator) < 0.5
        images, targets = zip(
            *(example(*records[i][1:], bool(f)) for i, f in zip(batch, flips.tolist()))
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, peak_lr, warmup)
        loss = sum(model(list(images), list(targets)).values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}: loss {np.mean(losses[-log_every:]):.4f}", flush=True)
    model.eval()
    return np.asarray(losses, np.float32)


@torch.no_grad()
def detect(model, records):
    arrays = {"num_images": np.array(len(records))}
    for i, (image_id, image, _, _) in enumerate(records):
        out = model([to_tensor(image)])[0]
        arrays[f"img{i}_id"] = np.array(image_id)
        arrays[f"img{i}_boxes"] = out["boxes"].numpy()
        arrays[f"img{i}_scores"] = out["scores"].numpy()
        arrays[f"img{i}_labels"] = out["labels"].numpy()
    return arrays


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("voc_root")
    parser.add_argument("outdir")
    parser.add_argument("--classes", required=True, help="comma-separated; label k + 1 is the k-th")
    parser.add_argument("--arch", default="fasterrcnn_mobilenet_v3_large_fpn")
    parser.add_argument("--min-size", type=int, default=256)
    parser.add_argument("--max-size", type=int, default=320)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--rois-per-image", type=int, default=32, help="sampled in training")
    parser.add_argument("--positive-fraction", type=float, default=0.5, help="of the sampled ROIs")
    parser.add_argument("--proposals", type=int, default=600, help="RPN top-n in training")
    parser.add_argument(
        "--frozen-bn-steps", type=int, default=150, help="the last N steps with batch norm frozen"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    classes = args.classes.split(",")
    builder = getattr(detection, args.arch)
    model = builder(
        weights=None,
        weights_backbone=None,
        num_classes=len(classes) + 1,
        min_size=args.min_size,
        max_size=args.max_size,
        box_batch_size_per_image=args.rois_per_image,
        box_positive_fraction=args.positive_fraction,
        rpn_pre_nms_top_n_train=args.proposals,
        rpn_post_nms_top_n_train=args.proposals,
    )
    start, start_cpu = time.perf_counter(), time.process_time()
    losses = train(
        model,
        read_split(args.voc_root, "train", classes),
        args.steps,
        args.batch_size,
        args.learning_rate,
        generator,
        args.frozen_bn_steps,
        args.log_every,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    os.makedirs(args.outdir, exist_ok=True)
    torch.save({"model": model.state_dict()}, os.path.join(args.outdir, "model.pth"))
    arrays = detect(model, read_split(args.voc_root, "val", classes))
    arrays["losses"] = losses
    arrays["train_seconds"] = np.array(seconds)
    arrays["train_cpu_seconds"] = np.array(cpu_seconds)
    partial = os.path.join(args.outdir, "detections.partial.npz")
    np.savez(partial, **arrays)
    os.replace(partial, os.path.join(args.outdir, "detections.npz"))


if __name__ == "__main__":
    main()
