"""Calibration (bias/gain) and the shared optimisation helpers (training/rlhf/calibration.py, optim.py)."""

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from training.rlhf.calibration import Calibration, calibration_report, fit_calibration
from training.rlhf.optim import (
    build_adamw,
    capture_rng_state,
    param_groups,
    restore_rng_state,
    seed_everything,
    warmup_cosine_lambda,
    warmup_cosine_scheduler,
    warmup_steps_for,
)

# --- calibration ------------------------------------------------------------------------------------------


def test_bias_only_calibration_gives_mean_zero_and_keeps_the_spread():
    raw = [2.0, 3.0, 7.0, -1.0]
    calibration = fit_calibration(raw)
    assert calibration.bias == pytest.approx(-2.75) and calibration.gain == 1.0
    calibrated = calibration.apply(torch.tensor(raw, dtype=torch.float64))
    assert float(calibrated.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(calibrated.std(unbiased=False)) == pytest.approx(float(np.std(raw)))


def test_gain_calibration_gives_mean_zero_std_one():
    raw = np.random.default_rng(0).normal(3.0, 5.0, size=200)
    calibration = fit_calibration(raw.tolist(), gain=True)
    calibrated = np.array(calibration.apply_floats(raw.tolist()))
    assert calibrated.mean() == pytest.approx(0.0, abs=1e-10)
    assert calibrated.std() == pytest.approx(1.0, abs=1e-10)
    report = calibration_report(raw.tolist(), calibration)
    assert report["calibrated_mean"] == pytest.approx(0.0, abs=1e-10)
    assert report["calibrated_std"] == pytest.approx(1.0, abs=1e-10)
    assert report["raw_mean"] == pytest.approx(raw.mean())


def test_calibration_rejects_degenerate_sets():
    with pytest.raises(ValueError, match="empty"):
        fit_calibration([])
    with pytest.raises(ValueError, match="constant"):
        fit_calibration([1.0, 1.0, 1.0], gain=True)
    with pytest.raises(ValueError, match="NaN"):
        fit_calibration([1.0, float("nan")])
    with pytest.raises(ValueError, match="gain"):
        Calibration.from_dict({"bias": 0.0, "gain": -1.0})


def test_calibration_round_trips_and_identity_is_a_no_op():
    calibration = Calibration(bias=-0.5, gain=2.0)
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(calibration.apply(x), torch.tensor([1.5, 3.5]))
    assert Calibration().apply(x) is x
    assert Calibration.from_dict(None) == Calibration()


# --- optimisation helpers ----------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.ln_f = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_decay_matrices_only_and_skip_frozen_parameters():
    model = Tiny()
    groups = param_groups(model, weight_decay=0.1)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p is model.linear.weight for p in decay["params"]] == [True]
    assert {id(p) for p in no_decay["params"]} == {id(model.linear.bias), id(model.ln_f.weight), id(model.ln_f.bias)}
    optimizer = build_adamw(model, lr=1e-3, weight_decay=0.1)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 4
    with pytest.raises(ValueError, match="no trainable"):
        build_adamw(nn.Linear(2, 2).requires_grad_(False), lr=1e-3, weight_decay=0.0)


def test_warmup_cosine_schedule_values():
    f = lambda step: warmup_cosine_lambda(step, warmup_steps=4, total_steps=12)  # noqa: E731
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(8) == pytest.approx(0.5)  # half-way through the decay
    assert f(12) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_lambda(12, warmup_steps=4, total_steps=12, min_ratio=0.1) == pytest.approx(0.1)
    values = [f(s) for s in range(4, 13)]
    assert values == sorted(values, reverse=True)
    assert warmup_steps_for(100, 0.03) == 3 and warmup_steps_for(10, 0.0) == 0 and warmup_steps_for(10, 0.01) == 1


def test_scheduler_drives_the_learning_rate_and_its_state_round_trips():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=2, total_steps=6)
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[:2] == [0.5, 1.0]
    state = scheduler.state_dict()
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = warmup_cosine_scheduler(torch.optim.AdamW(model.parameters(), lr=1.0), warmup_steps=2, total_steps=6)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.get_last_lr() == scheduler.get_last_lr()
    with pytest.raises(ValueError):
        warmup_cosine_scheduler(optimizer, warmup_steps=7, total_steps=6)


def test_seed_everything_offsets_by_rank():
    assert seed_everything(5, rank=0) == 5
    a = torch.rand(3)
    assert seed_everything(5, rank=1) == 6
    b = torch.rand(3)
    seed_everything(5, rank=0)
    assert torch.equal(torch.rand(3), a) and not torch.equal(a, b)


def test_rng_state_capture_and_restore_replays_every_generator(tmp_path):
    seed_everything(123)
    random.random(), np.random.rand(), torch.rand(1)
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(np.random.randn()))
    seed_everything(999)  # disturb everything
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(np.random.randn()))
    assert again == expected
    assert not math.isnan(again[0])
