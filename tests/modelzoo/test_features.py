import numpy as np
import pytest

from prediction_service.errors import InvalidInput
from prediction_service.modelzoo.features import N_FEATURES, compute_features, feature_window
from prediction_service.modelzoo.synthetic import synthetic_ohlcv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_feature_window_is_60_by_110_and_finite(seed):
    window = feature_window(synthetic_ohlcv(200, seed=seed))
    assert window.shape == (60, N_FEATURES) == (60, 110)
    assert window.dtype == np.float32 and np.isfinite(window).all()


def test_warm_up_rows_are_finite_too():
    features = compute_features(synthetic_ohlcv(61, seed=4))
    assert np.isfinite(features).all()
    assert features.std(axis=0).max() > 0  # not all-constant columns


def test_flat_prices_and_zero_volume_stay_finite():
    flat = np.tile([10.0, 10.0, 10.0, 10.0, 0.0], (80, 1))
    assert np.isfinite(feature_window(flat)).all()


def test_window_is_the_tail_of_the_full_feature_matrix():
    series = synthetic_ohlcv(150, seed=9)
    np.testing.assert_array_equal(feature_window(series), compute_features(series)[-60:])


def test_synthetic_ohlcv_is_seeded_and_consistent():
    a, b = synthetic_ohlcv(300, seed=3), synthetic_ohlcv(300, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, synthetic_ohlcv(300, seed=4))
    open_, high, low, close, volume = a.T
    assert (high >= np.maximum(open_, close)).all() and (low <= np.minimum(open_, close)).all()
    assert (low > 0).all() and (volume > 0).all()


@pytest.mark.parametrize("bad", [np.ones((30, 5)), np.ones((80, 4)), np.full((80, 5), -1.0)])
def test_bad_ohlcv_raises_invalid_input(bad):
    with pytest.raises(InvalidInput):
        feature_window(bad)
