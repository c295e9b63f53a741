"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data.schema import runtime_classes
from predictor import metrics as M

Y = [1, 2, 3, 4]
P = [2, 2, 2, 6]


def test_mae_rmse_by_hand() -> None:
    assert M.mae(Y, P) == pytest.approx(1.0)  # |1-2|+0+|3-2|+|4-6| = 4 over 4
    assert M.rmse(Y, P) == pytest.approx(math.sqrt(1.5))  # (1+0+1+4)/4


def test_kendall_tau_b_with_ties_by_hand() -> None:
    # 3 concordant, 0 discordant, 3 pairs tied in P only: 3 / sqrt(6 * 3)
    assert M.kendall_tau(Y, P) == pytest.approx(3 / math.sqrt(18))


def test_spearman_by_hand() -> None:
    # ranks of P are (2, 2, 2, 4): covariance 3, variances 5 and 3
    assert M.spearman(Y, P) == pytest.approx(3 / math.sqrt(15))


def test_constant_prediction_has_zero_rank_correlation() -> None:
    assert M.kendall_tau(Y, [5, 5, 5, 5]) == 0.0
    assert M.spearman(Y, [5, 5, 5, 5]) == 0.0


def test_mae_log_floors_predictions_at_one_token() -> None:
    assert M.mae_log([1, math.e], [math.e, math.e]) == pytest.approx(0.5)
    assert M.mae_log([1], [0.5]) == pytest.approx(0.0)


def test_class_accuracy_uses_prompt_plus_output_and_paper_bounds() -> None:
    # true totals 128 (short), 102, 403, 14; predicted 129 (medium!), 102, 402, 16
    assert M.class_accuracy([127, 100, 400, 10], Y, P) == pytest.approx(0.75)
    assert list(runtime_classes([128, 129, 512, 513])) == [0, 1, 1, 2]


def test_coverage_by_hand() -> None:
    assert M.coverage(Y, [1, 1, 5, 3]) == pytest.approx(0.5)


def test_length_metrics_bundle() -> None:
    q = np.column_stack([P, [1, 1, 5, 3]])
    out = M.length_metrics(Y, q, [127, 100, 400, 10])
    assert out["n"] == 4 and out["mae"] == pytest.approx(1.0)
    assert out["p90_coverage"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        M.length_metrics(Y, np.array(P), [1, 1, 1, 1])


def test_drift_metrics_at_fixed_t_over_running_requests() -> None:
    L = np.array([20, 40, 200])
    run = M.running_at(L, 32)
    assert list(run) == [False, True, True]
    out = M.drift_metrics(L[run], 32, np.array([[10, 20], [100, 200]]))
    assert out["n"] == 2
    assert out["mae"] == pytest.approx(35.0)  # true remaining 8, 168
    assert out["p90_coverage"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="still running"):
        M.drift_metrics(L, 32, np.ones(3))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"same|values"):
        M.mae([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        M.mae([], [])
    with pytest.raises(ValueError, match="finite"):
        M.mae([1, np.nan], [1, 2])
