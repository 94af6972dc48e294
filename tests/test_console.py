"""What the console and the pictures tell a user (issue 17): lr_find's warning, integer epoch ticks,
labelled grids, interpolation strips with their endpoints, the P(mask) colour bar, progress."""
import math

from sandbox.analysis.lr_find import end_slope, range_advice, still_falling

LRS = [10 ** (-5 + i / 4) for i in range(21)]  # 1e-5 .. 1, 4 per decade


def test_lr_find_warns_only_while_the_last_slope_of_the_curve_falls():
    # falls to 0.84 one step before the end, then jumps to 1.2: the curve turned. The old rule (minimum
    # within the last two points) called this "still falling"; the least-squares slope over the last 3
    # points (21 // 10 = 2 -> 3) is (1.2 - 0.85) / (2 * ln(10) / 4) > 0
    turned = [2.0 - 0.05 * i for i in range(18)] + [1.15, 1.14, 1.6]
    assert min(range(21), key=turned.__getitem__) == 19  # the minimum is the second-last point
    assert end_slope(LRS, turned) > 0 and not still_falling(LRS, turned)
    falling = [2.0 - 0.05 * i for i in range(21)]  # d loss / d log lr = -0.05 / (ln 10 / 4) everywhere
    assert math.isclose(end_slope(LRS, falling), -0.05 / (math.log(10) / 4))
    assert still_falling(LRS, falling) and not still_falling(LRS, falling, stopped_early=True)


def test_lr_find_advice_never_goes_above_lr_1_for_adam():
    def advice(end, optimizer):
        lrs = [end / 10 ** (3 - i / 4) for i in range(13)]
        return range_advice({"lrs": lrs, "still_falling": True}, optimizer)

    exhausted = advice(1.0, "adamw")
    assert "range is exhausted" in exhausted and "did not turn" in exhausted and "higher --max-lr" not in exhausted
    assert "range is exhausted" in advice(1.0, "adam")
    assert "--max-lr 1)" in advice(0.3, "adamw")  # 10 x 0.3 capped at 1
    assert "--max-lr 10)" in advice(1.0, "sgd")  # plain SGD: a higher lr is a fair question
    assert range_advice({"lrs": [1e-3, 1.0], "still_falling": False}, "adamw") is None
