"""torchvision reference outputs for the parity tests; run as a script in its own process (torch only).

    python tests/weights/torchvision_reference.py PRESET OUTDIR [--seed 0] [--num-classes 91]
        [--min-size N --max-size M]

builds torchvision's Faster R-CNN for PRESET (``fasterrcnn_resnet50_fpn``,
``fasterrcnn_resnet50_fpn_v2``, ``fasterrcnn_mobilenet_v3_large_fpn``,
``fasterrcnn_mobilenet_v3_large_320_fpn``) with seeded random weights (and torchvision's ``min_size`` / ``max_size`` when given, as a user
trains at a smaller size), and writes

- ``OUTDIR/PRESET.pth``: its state dict (what the importer converts);
- ``OUTDIR/PRESET.npz``: for each of three images (``img{i}_*``: 480x640, 800x600 portrait, 333x517),
  every stage of the eval-mode forward pass, NHWC where the tensor is a map:

  ``image`` (uint8 HWC input), ``transformed`` (normalised, resized, padded batch ``[1, H, W, 3]``),
  ``image_size`` (resized size before padding), ``features_<level>`` (backbone + FPN ``[1, h, w, C]``,
  levels in torchvision's order, names in ``levels``), ``objectness_<level>`` ``[1, h, w, A]`` and
  ``deltas_<level>`` ``[1, h, w, A * 4]`` (torchvision's ``(dx, dy, dw, dh)`` per anchor),
  ``anchors`` ``[N, 4]`` (x1, y1, x2, y2 over all levels), ``proposals`` ``[P, 4]`` and
  ``proposal_scores`` ``[P]`` (post-NMS, P <= 1000, sigmoid scores), ``class_logits`` ``[P, classes]``
  and ``box_regression`` ``[P, classes * 4]`` of the second stage on those proposals,
  ``pooled`` (the first 16 ROI-pooled maps ``[16, 7, 7, C]``), and the final ``boxes`` (x1, y1, x2, y2
  in original image pixels), ``scores``, ``labels``; and ``min_size`` / ``max_size``, the model's
  resize settings.

Random weights would make every score ~equal (RPN logits ~0, class scores ~1 / classes, below the
0.05 threshold), so the model is made non-trivial, still from the seed: batch-norm statistics are
measured on two calibration images (train-mode statistics, ``momentum=None``) and then perturbed
(running mean/var, gamma, beta), and each predictor (RPN logits and deltas, class logits, box
deltas) is rescaled so its outputs have a set spread on the calibration images.
"""

import argparse
import collections
import os

import numpy as np
import torch
import torchvision
from reference_images import make_image  # this folder is sys.path[0] when run as a script
from torchvision.models import detection

PRESETS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)
IMAGE_SIZES = ((480, 640), (800, 600), (333, 517))  # (height, width)
CALIBRATION_SIZES = ((512, 512), (448, 576))
# target output standard deviations of the predictors on the calibration images
TARGET_STD = {"rpn_logits": 2.0, "rpn_deltas": 0.3, "class_logits": 2.5, "box_deltas": 0.3}
POOLED_KEPT = 16


def to_tensor(image):
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0


def nhwc(tensor):
    return tensor.detach().permute(0, 2, 3, 1).contiguous().numpy()


def build(preset, num_classes, min_size=None, max_size=None):
    builder = getattr(detection, preset)
    sizes = {"min_size": min_size, "max_size": max_size}
    sizes = {key: value for key, value in sizes.items() if value is not None}
    return builder(weights=None, weights_backbone=None, num_classes=num_classes, **sizes)


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@torch.no_grad()
def calibrate(model, images, generator):
    """Batch-norm statistics from the calibration images, then perturbed; predictors rescaled."""
    model.eval()
    norms = _batch_norms(model)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration passes
        m.train()
    for image in images:
        model([to_tensor(image)])
    for m in norms:
        m.eval()
        n = m.num_features
        m.running_mean += 0.1 * m.running_var.sqrt() * torch.randn(n, generator=generator)
        m.running_var *= torch.empty(n).uniform_(0.8, 1.25, generator=generator)
        m.weight.copy_(torch.empty(n).uniform_(0.7, 1.3, generator=generator))
        m.bias.copy_(0.1 * torch.randn(n, generator=generator))

    predictors = {
        "rpn_logits": model.rpn.head.cls_logits,
        "rpn_deltas": model.rpn.head.bbox_pred,
        "class_logits": model.roi_heads.box_predictor.cls_score,
        "box_deltas": model.roi_heads.box_predictor.bbox_pred,
    }
    for name, module in predictors.items():
        inputs, outputs = [], []

        def record(m, i, o):
            x = i[0].detach()
            inputs.append(x.transpose(0, 1).flatten(1) if x.dim() == 4 else x.t())
            outputs.append(o.detach().flatten())

        hook = module.register_forward_hook(record)
        for image in images:
            model([to_tensor(image)])
        hook.remove()
        std = torch.cat(outputs).std().item()
        module.weight.mul_(TARGET_STD[name] / max(std, 1e-12))
        # centre each output on the calibration images (else one class or anchor wins everywhere)
        mean_input = torch.cat(inputs, 1).mean(1)
        centre = module.weight.flatten(1) @ mean_input
        noise = torch.randn(centre.shape, generator=generator)
        module.bias.copy_(-centre + 0.3 * TARGET_STD[name] * noise)


@torch.no_grad()
def reference(model, image):
    """Every stage of the eval-mode forward pass on one image, as numpy arrays."""
    out = {"image": image}
    x = to_tensor(image)
    images, _ = model.transform([x])
    out["transformed"] = nhwc(images.tensors)
    out["image_size"] = np.array(images.image_sizes[0], np.int32)
    features = model.backbone(images.tensors)
    levels = list(features.keys())
    for level, value in features.items():
        out[f"features_{level}"] = nhwc(value)
    feature_list = list(features.values())
    objectness, deltas = model.rpn.head(feature_list)
    for level, o, d in zip(levels, objectness, deltas):
        out[f"objectness_{level}"] = nhwc(o)
        out[f"deltas_{level}"] = nhwc(d)
    out["anchors"] = model.rpn.anchor_generator(images, feature_list)[0].numpy()

    captured = {}
    filter_proposals = model.rpn.filter_proposals

    def capturing(*args, **kwargs):
        boxes, scores = filter_proposals(*args, **kwargs)
        captured["scores"] = scores
        return boxes, scores

    model.rpn.filter_proposals = capturing
    try:
        proposals, _ = model.rpn(images, features)
    finally:
        model.rpn.filter_proposals = filter_proposals
    out["proposals"] = proposals[0].numpy()
    out["proposal_scores"] = captured["scores"][0].numpy()

    heads = model.roi_heads
    pooled = heads.box_roi_pool(features, proposals, images.image_sizes)
    out["pooled"] = nhwc(pooled[:POOLED_KEPT])
    class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
    out["class_logits"] = class_logits.numpy()
    out["box_regression"] = box_regression.numpy()

    detections = model([x])[0]
    out["boxes"] = detections["boxes"].numpy()
    out["scores"] = detections["scores"].numpy()
    out["labels"] = detections["labels"].numpy()
    return out, levels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=PRESETS)
    parser.add_argument("outdir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=91)
    parser.add_argument("--min-size", type=int, help="torchvision's min_size (default: its own)")
    parser.add_argument("--max-size", type=int, help="torchvision's max_size (default: its own)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    generator = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build(args.preset, args.num_classes, args.min_size, args.max_size)
    calibration = [make_image(rng, h, w) for h, w in CALIBRATION_SIZES]
    calibrate(model, calibration, generator)
    model.eval()
    os.makedirs(args.outdir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(args.outdir, f"{args.preset}.pth"))

    arrays = collections.OrderedDict()
    for i, (h, w) in enumerate(IMAGE_SIZES):
        out, levels = reference(model, make_image(rng, h, w))
        for key, value in out.items():
            arrays[f"img{i}_{key}"] = value
    arrays["levels"] = np.array(levels)
    arrays["num_images"] = np.array(len(IMAGE_SIZES))
    (min_size,) = model.transform.min_size
    arrays["min_size"] = np.array(min_size)
    arrays["max_size"] = np.array(model.transform.max_size)
    arrays["torchvision_version"] = np.array(torchvision.__version__)
    partial = os.path.join(args.outdir, f"{args.preset}.partial.npz")
    np.savez(partial, **arrays)
    os.replace(partial, os.path.join(args.outdir, f"{args.preset}.npz"))  # the npz marks it done


if __name__ == "__main__":
    main()
