"""Metrics, one home per kind; every per-image function returns ``(B,)`` values.

    segmentation.py  hard Dice, IoU, pixel accuracy, boundary F1 (the one Dice of the sandbox); per class and mIoU
    regression.py    L1, RMSE, SSIM (depth maps, reconstructions), the SSIM window rule; depth: delta < 1.25, edge F1
    generative.py    fid_own, KID, precision/recall, nearest distances, diversity on the sandbox's own fixed features
    inception.py     real Inception features from a local weights file (torch-fidelity's), for FID/KID
    probe.py         the latent probe (ridge and kernel ridge R² from codes to known parameters)
    selection.py     the best-epoch rule (trainer's checkpoints/best and the reports alike)
"""
from sandbox.metrics.regression import depth_metrics, regression_metrics, ssim_window
from sandbox.metrics.segmentation import (boundary_f1_per_image, class_metrics, class_scores, dice_per_image,
                                          hard_dice, iou_per_image, pixel_accuracy_per_image, segmentation_metrics)

__all__ = ["boundary_f1_per_image", "class_metrics", "class_scores", "depth_metrics", "dice_per_image", "hard_dice", "iou_per_image", "pixel_accuracy_per_image",
           "regression_metrics", "segmentation_metrics", "ssim_window"]
