import math

from molmo2_ros.training.examples import TruthPoint
from molmo2_ros.training.metrics import (PRF, count_close, count_summary, match_points, prf_summary, radius_hit,
                              track_prf)

SIZE = (100, 100)          # diagonal 141.4 -> hit radius 11.3 px


def test_hungarian_maximises_hits_where_greedy_would_not():
    truth = [TruthPoint(0, 1, 10, 10), TruthPoint(0, 2, 20, 10)]
    # p0 is nearest to truth 2 but also hits truth 1; p1 hits only truth 2.
    pred = [(0, 16, 10), (0, 30, 10)]
    r = match_points(pred, truth, radius_hit(SIZE), SIZE)
    assert (r.hits, r.precision, r.recall, r.f1) == (2, 1.0, 1.0, 1.0)


def test_wrong_frame_or_too_far_is_a_miss():
    truth = [TruthPoint(0, 1, 50, 50)]
    assert match_points([(1, 50, 50)], truth, radius_hit(SIZE), SIZE).hits == 0
    assert match_points([(0, 50, 62)], truth, radius_hit(SIZE), SIZE).hits == 0   # 12 px > 11.3
    assert match_points([(0, 50, 61)], truth, radius_hit(SIZE), SIZE).hits == 1


def test_empty_cases():
    truth = [TruthPoint(0, 1, 50, 50)]
    assert match_points([], truth, radius_hit(SIZE), SIZE).f1 == 0.0
    assert match_points([(0, 1, 1)], [], radius_hit(SIZE), SIZE).f1 == 0.0
    assert PRF(0, 0, 0).f1 == 1.0          # nothing there, nothing claimed


def test_count_close_and_majority_baseline():
    assert count_close(11, 10) and not count_close(12, 10)            # 1 + floor(0.5) = 1
    assert count_close(22, 20) and not count_close(23, 20)            # 1 + floor(1.0) = 2
    assert not count_close(None, 0)
    s = count_summary([(0, 0), (1, 1), (2, 1), (None, 1)])
    assert s["exact"] == 0.5 and s["close"] == 0.75
    assert s["majority_count"] == 1 and s["majority_exact"] == 0.75 and s["unanswered"] == 1


def test_track_prf_matches_per_frame():
    truth = [TruthPoint(0, 1, 10, 10), TruthPoint(1, 1, 20, 10), TruthPoint(1, 2, 80, 80)]
    pred = [(0, 11, 10), (1, 80, 81), (1, 50, 50)]
    r = track_prf(pred, truth, radius_hit(SIZE), SIZE)
    assert (r.hits, r.n_pred, r.n_true) == (2, 3, 3)
    summary = prf_summary([r, PRF(1, 1, 1)])
    assert math.isclose(summary["f1"], (2 / 3 + 1) / 2)
    assert summary["hits"] == 3 and summary["predicted"] == 4
