"""DynamicLossScaler arithmetic and state (pure Python)."""

from __future__ import annotations

import pytest

from mpcompile.errors import TrainingError
from mpcompile.training import DynamicLossScaler


def test_defaults_match_pytorch_grad_scaler():
    scaler = DynamicLossScaler()
    assert scaler.scale == 2.0**16
    assert (scaler.growth_factor, scaler.backoff_factor, scaler.growth_interval) == (2.0, 0.5, 2000)


def test_backoff_on_overflow_and_growth_after_clean_interval():
    scaler = DynamicLossScaler(init_scale=1024.0, growth_interval=3)
    assert scaler.update(all_finite=False) is False
    assert scaler.scale == 512.0
    assert [scaler.update(True) for _ in range(2)] == [True, True]
    assert scaler.scale == 512.0
    scaler.update(True)
    assert scaler.scale == 1024.0
    # An overflow resets the clean-step count.
    scaler.update(True)
    scaler.update(False)
    scaler.update(True)
    scaler.update(True)
    assert scaler.scale == 512.0
    state = scaler.state
    assert (state.skipped_steps, state.total_steps, state.growth_tracker) == (2, 8, 2)


def test_min_and_max_scale_bound_the_scale():
    scaler = DynamicLossScaler(init_scale=4.0, min_scale=2.0, max_scale=8.0, growth_interval=1)
    for _ in range(3):
        scaler.update(False)
    assert scaler.scale == 2.0
    for _ in range(5):
        scaler.update(True)
    assert scaler.scale == 8.0


def test_static_scale_never_changes_but_still_skips_overflow():
    scaler = DynamicLossScaler.static(128.0)
    assert scaler.update(False) is False
    assert scaler.scale == 128.0
    for _ in range(5000):
        scaler.update(True)
    assert scaler.scale == 128.0


def test_state_round_trip(tmp_path):
    scaler = DynamicLossScaler(init_scale=256.0, growth_interval=5)
    scaler.update(False)
    scaler.update(True)
    path = tmp_path / "scaler.json"
    scaler.save(path)
    loaded = DynamicLossScaler.load(path)
    assert loaded.state == scaler.state
    assert loaded.growth_interval == 5


@pytest.mark.parametrize(
    "options",
    [
        {"init_scale": 0.0},
        {"growth_factor": 1.0},
        {"backoff_factor": 1.5},
        {"growth_interval": 0},
        {"min_scale": 4.0, "max_scale": 2.0},
    ],
)
def test_bad_options_are_user_errors(options):
    with pytest.raises(TrainingError):
        DynamicLossScaler(**options)


def test_unreadable_state_is_a_user_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(TrainingError):
        DynamicLossScaler.load(path)
