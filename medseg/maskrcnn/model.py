"""Construction of the Mask R-CNN network and loading of user-supplied pretrained weights.

The network is torchvision's ``MaskRCNN`` with a feature pyramid (FPN) on one of
``BACKBONES``. Nothing is downloaded: weights start random unless the user passes a
checkpoint file.

Training from scratch with torchvision's defaults (frozen batch norm, SGD at 0.01) diverges
within a few steps, so the default ``norm="group"`` puts GroupNorm in the backbone and the
mask head: it normalises per image, so it behaves the same with a batch of two slices as
with thirty-two, and identically in training and inference. ``norm="frozen-bn"`` is the
torchvision layout, for fine-tuning a torchvision/ImageNet checkpoint whose batch-norm
statistics must be kept.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from medseg.errors import ConfigError, WeightsError
from medseg.runtime import read_checkpoint

log = logging.getLogger(__name__)

BACKBONES = ("resnet50", "resnet34", "resnet18", "mobilenet_v3_large")
NORMS = ("group", "frozen-bn")

# Heads whose shape depends on the number of classes: re-initialised when a pretrained
# detector was trained on other classes (e.g. a COCO checkpoint).
_CLASS_HEADS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the largest divisor of ``channels`` below that."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _norm_layer(norm: str):
    if norm == "group":
        return group_norm
    if norm == "frozen-bn":
        return FrozenBatchNorm2d
    raise ConfigError(f"norm: unknown normalisation {norm!r}; use one of {list(NORMS)}")


def build_model(*, num_classes: int, backbone: str = "resnet50", norm: str = "group",
                image_size: int = 256) -> MaskRCNN:
    """A randomly initialised Mask R-CNN for ``num_classes`` foreground classes.

    Parameters
    ----------
    num_classes
        Foreground classes; the network gets one more output for background.
    backbone
        One of ``BACKBONES``: ``resnet50`` as in He et al. (2017); ``resnet18``/``resnet34``
        and ``mobilenet_v3_large`` are lighter, for CPU.
    norm
        ``"group"`` (GroupNorm, for training from scratch) or ``"frozen-bn"``.
    image_size
        Slices are resized (inside the network, aspect ratio kept) so that their longer
        side is ``image_size`` pixels; masks come back at the slice's own size. Anchor sizes
        scale with it: ``image_size / 16`` to ``image_size`` in five octaves.
    """
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone: unknown backbone {backbone!r}; use one of {list(BACKBONES)}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    if image_size < 32 or image_size % 32:
        raise ConfigError(f"image_size must be a multiple of 32 and at least 32, got {image_size}")
    norm_layer = _norm_layer(norm)
    sizes = tuple(image_size / 16 * 2**i for i in range(5))
    ratios = (0.5, 1.0, 2.0)
    if backbone.startswith("resnet"):
        body = resnet_fpn_backbone(backbone_name=backbone, weights=None, norm_layer=norm_layer, trainable_layers=5)
        feature_maps = ["0", "1", "2", "3"]
        anchors = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * 5)
    else:
        # MobileNet's FPN has two levels (strides 16 and 32) plus a pooled one; each level
        # carries every anchor size, as in torchvision's fasterrcnn_mobilenet_v3_large_fpn.
        body = mobilenet_backbone(backbone_name=backbone, weights=None, fpn=True, norm_layer=norm_layer,
                                  trainable_layers=6)
        feature_maps = ["0", "1"]
        anchors = AnchorGenerator((sizes,) * 3, (ratios,) * 3)
    mask_norm = group_norm if norm == "group" else None
    return MaskRCNN(
        body,
        num_classes=num_classes + 1,
        min_size=image_size,
        max_size=image_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(feature_maps, output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(feature_maps, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(body.out_channels, [256] * 4, 1, norm_layer=mask_norm),
        # Slices hold a handful of organs, not COCO's crowds: fewer proposals and sampled
        # RoIs cost less on CPU and lose nothing. 32 RoIs per slice (8 positives feed the
        # mask head, most of the cost): demo training 18 % faster than with 64, test Dice
        # 0.875 against 0.879 (4 test phantoms, 150 steps).
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=32,
        box_detections_per_img=50,
    )


def load_pretrained(model: MaskRCNN, path: str | Path) -> list[str]:
    """Copy the weights in ``path`` into ``model``; returns the parameter names left as they were.

    Accepted: a whole detector (torchvision Mask R-CNN or a medseg model; class-specific
    heads are re-initialised when the class count differs) or a backbone alone (an
    ImageNet ResNet/MobileNet state dict, its classifier ignored). Anything else that does
    not fit raises ``WeightsError`` naming the first offending tensors.
    """
    state = read_checkpoint(path, what="pretrained checkpoint")
    target = model.state_dict()
    if not any(k.startswith("backbone.") for k in state):
        # A classification backbone: ``conv1.weight``, ``layer1...`` / ``features...``.
        prefix = "backbone.body." if any(k.startswith("backbone.body.") for k in target) else "backbone."
        state = {prefix + k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    if any(k.endswith("running_mean") for k in state) and not any(k.endswith("running_mean") for k in target):
        example = next(k for k in state if k.endswith("running_mean"))
        raise WeightsError(
            f"{path} holds batch-norm statistics ({example}) but the model uses GroupNorm: "
            "train with norm='frozen-bn' (CLI: --norm frozen-bn) to fine-tune this checkpoint"
        )
    unexpected = [k for k in state if k not in target and not k.endswith("num_batches_tracked")]
    mismatched = [k for k in state if k in target and state[k].shape != target[k].shape]
    bad_mismatch = [k for k in mismatched if not k.startswith(_CLASS_HEADS)]
    if unexpected or bad_mismatch:
        details = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in bad_mismatch[:3]]
        details += [f"{k} (not in this model)" for k in unexpected[:3]]
        raise WeightsError(
            f"{path} does not fit a Mask R-CNN with this backbone/norm: {'; '.join(details)}"
            f"{' ...' if len(unexpected) + len(bad_mismatch) > 3 else ''}; check the backbone it was trained with"
        )
    usable = {k: v for k, v in state.items() if k in target and k not in mismatched}
    if not usable:
        raise WeightsError(f"{path} shares no tensor with this model; check the backbone it was trained with")
    target.update(usable)
    model.load_state_dict(target)
    kept = sorted(set(target) - set(usable))
    log.info("loaded %d tensors from %s; %d left as initialised", len(usable), path, len(kept))
    if mismatched:
        log.info("re-initialised class-specific heads (class count differs): %s", ", ".join(mismatched))
    return kept

