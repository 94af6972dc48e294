import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F

from sandbox.errors import SandboxError
from sandbox.metrics import boundary_f1_per_image, regression_metrics, segmentation_metrics


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def square(rows: slice, cols: slice, side: int = 10) -> torch.Tensor:
    m = torch.zeros(1, 1, side, side)
    m[..., rows, cols] = 1
    return m


def as_logits(mask: torch.Tensor) -> torch.Tensor:
    return 10 * (2 * mask - 1)


TRUE = square(slice(2, 6), slice(2, 6))  # a 4x4 square: its boundary is the 12-pixel ring


def test_boundary_f1_perfect():
    assert boundary_f1_per_image(as_logits(TRUE), TRUE, tolerance=0).item() == 1.0


def test_boundary_f1_shift_by_one_pixel():
    shifted = square(slice(2, 6), slice(3, 7))
    assert boundary_f1_per_image(as_logits(shifted), TRUE, tolerance=1).item() == pytest.approx(1.0)
    # tolerance 0: the rings share 6 of their 12 pixels (top and bottom rows, cols 3..5) -> P = R = F1 = 0.5
    assert boundary_f1_per_image(as_logits(shifted), TRUE, tolerance=0).item() == pytest.approx(0.5)
    # shifted by 3 px, tolerance 1. Far ring: rows 2, 5 at cols 5..8 and cols 5, 8 at rows 3..4; within 1 px
    # of the true ring (rows 2, 5 at cols 2..5; cols 2, 5 at rows 3..4): cols 5, 6 on rows 2 and 5, col 5 on
    # rows 3..4 -> P = 6/12; symmetrically R = 6/12 -> F1 = 0.5
    far = square(slice(2, 6), slice(5, 9))
    assert boundary_f1_per_image(as_logits(far), TRUE, tolerance=1).item() == pytest.approx(0.5)


def test_boundary_f1_asymmetric_hand_computed():
    pred = square(slice(2, 4), slice(2, 4))  # 2x2 square: every pixel is boundary (4 px), all on the true ring
    # precision 4/4; recall: true ring pixels within 1 px of the 2x2 block: rows 2..4 x cols 2..4 on the ring
    # -> (2,2) (2,3) (2,4) (3,2) (4,2) = 5 of 12; F1 = 2 * 1 * 5/12 / (1 + 5/12) = 10/17
    assert boundary_f1_per_image(as_logits(pred), TRUE, tolerance=1).item() == pytest.approx(10 / 17, abs=1e-6)


def test_boundary_f1_empty_cases_and_batch():
    empty = torch.zeros(1, 1, 10, 10)
    logits = torch.cat([as_logits(empty), as_logits(TRUE), as_logits(empty)])
    target = torch.cat([empty, empty, TRUE])
    # both empty -> 1; prediction on an empty target -> 0; nothing predicted on a square -> 0
    assert boundary_f1_per_image(logits, target).tolist() == [1.0, 0.0, 0.0]


def test_boundary_ignores_the_image_frame():
    # a mask cut by the frame has its boundary only inside the image: full image = no boundary = matches empty truth
    full = torch.ones(1, 1, 6, 6)
    assert boundary_f1_per_image(as_logits(full), full).item() == 1.0
    left = square(slice(0, 10), slice(0, 4))  # left 4 columns: boundary is column 3 only
    right_shift = square(slice(0, 10), slice(0, 5))
    assert boundary_f1_per_image(as_logits(right_shift), left, tolerance=0).item() == 0.0
    assert boundary_f1_per_image(as_logits(right_shift), left, tolerance=1).item() == 1.0


def test_segmentation_metrics_has_boundary_f1():
    m = segmentation_metrics(as_logits(TRUE).repeat(3, 1, 1, 1), TRUE.repeat(3, 1, 1, 1))
    assert set(m) == {"dice", "iou", "pixel_acc", "boundary_f1"}
    assert all(v.shape == (3,) for v in m.values())
    assert m["boundary_f1"].tolist() == [1.0, 1.0, 1.0]


def test_regression_metrics_hand_computed():
    target = torch.zeros(2, 1, 4, 4)
    pred = torch.zeros(2, 1, 4, 4)
    pred[0, 0, 0, :2] = 0.4  # image 0: two errors of 0.4 -> l1 = 0.8/16, rmse = sqrt(0.32/16)
    pred[1] = 0.25  # image 1: all off by 0.25 -> l1 = rmse = 0.25
    m = regression_metrics(pred, target, win_size=3)
    assert m["l1"].tolist() == pytest.approx([0.05, 0.25])
    assert m["rmse"].tolist() == pytest.approx([(0.32 / 16) ** 0.5, 0.25])
    assert m["ssim"].shape == (2,)


@pytest.mark.parametrize("size, win", [(64, 11), (8, 7)])
def test_regression_ssim_per_image_matches_pytorch_msssim(size, win):
    x = F.avg_pool2d(torch.rand(3, 1, size + 4, size + 4), 5, stride=1)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    m = regression_metrics(x, y)  # win 11; at 8 px the window shrinks to 7
    expected = pytorch_msssim.ssim(x, y, data_range=1.0, win_size=win, size_average=False)
    torch.testing.assert_close(m["ssim"], expected)
    alone = pytorch_msssim.ssim(x[:1], y[:1], data_range=1.0, win_size=win)  # per image, not per batch
    assert m["ssim"][0].item() == pytest.approx(alone.item(), abs=1e-5)
    assert regression_metrics(x, x)["ssim"].tolist() == pytest.approx([1.0] * 3, abs=1e-6)


def test_regression_metrics_float32_under_bf16_autocast():
    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = regression_metrics(x.bfloat16(), y)
    ref = regression_metrics(x.bfloat16().float(), y)
    for k in m:
        assert m[k].dtype == torch.float32
        torch.testing.assert_close(m[k], ref[k])


def test_regression_ssim_too_small_is_clear():
    with pytest.raises(SandboxError, match=r"^metric ssim: images of side 2 px .* at least 3 px"):
        regression_metrics(torch.rand(1, 1, 2, 2), torch.rand(1, 1, 2, 2))


def test_delta_accuracy_counts_pixels_within_ratio_1_25_of_the_truth():
    from sandbox.metrics.regression import delta_accuracy

    target = torch.full((1, 1, 4, 4), 0.5)
    pred = target.clone()
    pred[..., :2, :] = 0.6     # ratio 1.2 < 1.25: a hit (8 pixels)
    pred[..., 2, :] = 0.75     # ratio 1.5: a miss (4 pixels)
    pred[..., 3, :2] = 0.38    # ratio 0.5 / 0.38 = 1.316: a miss (2 pixels)
    pred[..., 3, 2:] = -0.1    # non-positive: a miss (2 pixels)
    assert delta_accuracy(pred, target).item() == pytest.approx(8 / 16)
    target[..., 0, :] = 0      # no depth there: 4 of the 8 hits leave the count, 12 valid pixels remain
    assert delta_accuracy(pred, target).item() == pytest.approx(4 / 12)
    assert torch.isnan(delta_accuracy(pred, torch.zeros_like(target))).item()


def test_depth_edge_f1_matches_discontinuities_within_one_pixel_and_ignores_slopes():
    from sandbox.metrics.regression import depth_edge_f1

    def step(col: int) -> torch.Tensor:  # a floor-like slope (0.01 / px) with a 0.3 jump before column col
        d = torch.linspace(0.5, 0.58, 9).repeat(1, 1, 9, 1)
        d[..., col:] += 0.3
        return d

    truth = step(4)  # edge pixels: column 3 (the jump to its right), 9 of them
    assert depth_edge_f1(truth, truth).item() == 1.0
    assert depth_edge_f1(step(5), truth).item() == pytest.approx(1.0)  # 1 px off, tolerance 1
    assert depth_edge_f1(step(6), truth).item() == 0.0                 # 2 px off: no pixel matches
    flat = torch.linspace(0.5, 0.58, 9).repeat(1, 1, 9, 1)             # the slope alone has no edge
    assert depth_edge_f1(flat, truth).item() == 0.0 and depth_edge_f1(flat, flat).item() == 1.0
    # the jump in rows 0-3 only: predicted edges are column 3 of rows 0-3 (4 px, all true) and row 3 of
    # columns 4-8 (5 px, the jump down to row 4, none true): precision 4/9, recall 4/9 -> F1 = 4/9
    half = flat.clone()
    half[..., :4, 4:] += 0.3
    assert depth_edge_f1(half, truth, tolerance=0).item() == pytest.approx(4 / 9)
