"""core.schedules: warm-up, step decay boundaries, cosine endpoints, lr_table."""

import math

import numpy as np
import pytest

from dualkit.core.errors import SpecError
from dualkit.core.schedules import lr_at, lr_table
from dualkit.core.specs import ScheduleSpec


def test_warmup_is_linear_and_reaches_base():
    spec = ScheduleSpec(name="constant", warmup_steps=4)
    assert [lr_at(spec, 0.1, s, 100) for s in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_step_decay_boundaries():
    spec = ScheduleSpec(name="step", step_size=3, gamma=0.5)
    got = [lr_at(spec, 1.0, s, 100) for s in range(8)]
    assert got == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    # With warm-up the decay clock starts when the warm-up ends.
    warm = ScheduleSpec(name="step", step_size=3, gamma=0.5, warmup_steps=2)
    got = [lr_at(warm, 1.0, s, 100) for s in range(9)]
    assert got == [0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_cosine_endpoints_and_midpoint():
    spec = ScheduleSpec(name="cosine", warmup_steps=10, min_lr=0.01)
    total, base = 110, 0.5
    T = total - 10
    assert lr_at(spec, base, 9, total) == pytest.approx(base)  # last warm-up step
    assert lr_at(spec, base, 10, total) == base  # first step after warm-up: exactly base
    assert lr_at(spec, base, 10 + T // 2, total) == pytest.approx((base + 0.01) / 2, rel=1e-14)
    last = lr_at(spec, base, total - 1, total)
    assert last == pytest.approx(0.01 + (base - 0.01) * 0.5 * (1 + math.cos(math.pi * (T - 1) / T)), rel=1e-14)
    assert 0.01 < last < 0.01 + 1e-3
    # Past the planned end the cosine is clamped at its floor.
    assert lr_at(spec, base, total, total) == pytest.approx(0.01, rel=1e-14)
    assert lr_at(spec, base, total + 50, total) == pytest.approx(0.01, rel=1e-14)
    table = lr_table(spec, base, total)
    assert np.all(np.diff(table[10:]) <= 0)


def test_lr_table_matches_lr_at():
    for spec in (
        ScheduleSpec(name="constant"),
        ScheduleSpec(name="step", step_size=4, gamma=0.3, warmup_steps=3),
        ScheduleSpec(name="cosine", warmup_steps=5, min_lr=1e-4),
    ):
        table = lr_table(spec, 0.2, 37)
        assert table.dtype == np.float64 and table.shape == (37,)
        assert table.tolist() == [lr_at(spec, 0.2, i, 37) for i in range(37)]
    assert lr_table(ScheduleSpec(), 0.1, 0).shape == (0,)


def test_errors():
    with pytest.raises(SpecError, match="linear"):  # the message lists the names, linear among them
        lr_at(ScheduleSpec(name="exponential"), 0.1, 0, 10)
    with pytest.raises(SpecError):
        lr_table(ScheduleSpec(name="exponential"), 0.1, 10)
    with pytest.raises(ValueError):
        lr_at(ScheduleSpec(), 0.1, -1, 10)


def test_linear_hand_computed():
    spec = ScheduleSpec(name="linear", warmup_steps=2)
    # total 6: warm-up 0.5, 1.0 (this module's (step + 1) / w), then base * (4 - t) / 4 for t = step - 2
    assert lr_table(spec, 1.0, 6).tolist() == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert lr_at(spec, 1.0, 6, 6) == 0.0 and lr_at(spec, 1.0, 60, 6) == 0.0  # 0 at total_steps and after
    floor = ScheduleSpec(name="linear", min_lr=0.1)
    assert lr_table(floor, 0.5, 4).tolist() == pytest.approx([0.5, 0.4, 0.3, 0.2], rel=1e-15)
    assert lr_at(floor, 0.5, 9, 4) == pytest.approx(0.1, rel=1e-15)
    assert lr_at(ScheduleSpec(name="linear", warmup_steps=5), 0.2, 7, 5) == 0.0  # total <= warm-up: no decay span


@pytest.mark.parametrize("warmup, total", [(0, 9), (3, 20), (10, 10), (4, 1)])
def test_linear_decay_equals_hugging_faces(warmup, total):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    base = 3e-4
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = transformers.get_linear_schedule_with_warmup(opt, warmup, total)
    spec = ScheduleSpec(name="linear", warmup_steps=warmup)
    for step in range(total + 3):
        hf = sched.get_last_lr()[0]  # the lr HF's step ``step`` (0-based) trains with
        if step >= warmup:  # the decay is HF's exactly; the warm-up is one step ahead of HF's step / warmup
            assert lr_at(spec, base, step, total) == pytest.approx(hf, rel=1e-12, abs=1e-18), step
        else:
            assert lr_at(spec, base, step, total) == pytest.approx(base * (step + 1) / warmup, rel=1e-15)
            assert hf == pytest.approx(base * step / warmup, rel=1e-12, abs=1e-18)
        opt.step()
        sched.step()
