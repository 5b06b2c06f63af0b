"""``auto`` precision and memory format: chosen from measured timings, cached, and overridden by a
recipe that fixes them."""

from __future__ import annotations

import json

import pytest
import torch

from harness.engine import compute_choice
from harness.engine.compute_choice import NATIVE_BF16_ENV, StepTimer, Variant, Workload, candidates, choose

CPU = torch.device("cpu")


class FakeTimer(StepTimer):
    """Seconds per step from a table instead of a clock; each step still runs once, so every
    candidate is shown to build and train."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds, self.timed = seconds, []

    def seconds_per_step(self, variant, step, device, warmup) -> float:
        step()
        self.timed.append(variant.name)
        return self.seconds[variant.name]


class Refuses(StepTimer):
    def seconds_per_step(self, variant, step, device, warmup) -> float:
        raise AssertionError(f"{variant.name} was timed again instead of read from the cache")


def tiny_workload(batch: int = 2) -> Workload:
    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))

    return Workload(build_model=build, make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                    loss=torch.nn.functional.binary_cross_entropy_with_logits, batch_size=batch, height=16, width=24,
                    identity={"model": ["two-convs", {}]})


@pytest.mark.parametrize("winner", ["fp32", "fp32+cl", "bf16", "bf16+cl"])
def test_the_fastest_measured_candidate_wins(monkeypatch, tmp_path, winner):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    timer = FakeTimer({name: 1.0 if name == winner else 2.0 for name in ("fp32", "fp32+cl", "bf16", "bf16+cl")})
    decision = choose(CPU, "auto", "auto", tiny_workload(), timer=timer, cache=tmp_path)
    assert decision.chosen.name == winner and not decision.cached
    assert sorted(decision.step_seconds) == ["bf16", "bf16+cl", "fp32", "fp32+cl"]
    assert sorted(timer.timed) == sorted([*decision.step_seconds, winner]), "only the contender is timed twice"


def test_without_native_bf16_only_fp32_is_a_candidate(monkeypatch, tmp_path):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    assert [v.name for v in candidates(CPU)] == ["fp32", "fp32+cl"]
    timer = FakeTimer({"fp32": 2.0, "fp32+cl": 1.0})
    assert choose(CPU, "auto", "auto", tiny_workload(), timer=timer, cache=tmp_path).chosen == Variant("fp32", True)


def test_a_near_tie_goes_to_the_simpler_candidate(monkeypatch, tmp_path):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    timer = FakeTimer({"fp32": 1.0, "fp32+cl": 1.2, "bf16": 0.99, "bf16+cl": 1.5})
    assert choose(CPU, "auto", "auto", tiny_workload(), timer=timer, cache=tmp_path).chosen.name == "fp32"


def test_a_value_the_recipe_fixes_narrows_the_choice(monkeypatch, tmp_path):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    timer = FakeTimer({"fp32": 3.0, "fp32+cl": 2.0, "bf16": 1.0, "bf16+cl": 4.0})
    decision = choose(CPU, "fp32", "auto", tiny_workload(), timer=timer, cache=tmp_path)
    assert decision.chosen.name == "fp32+cl" and set(decision.step_seconds) == {"fp32", "fp32+cl"}
    decision = choose(CPU, "auto", False, tiny_workload(), timer=timer, cache=tmp_path)
    assert decision.chosen.name == "bf16" and set(decision.step_seconds) == {"fp32", "bf16"}


def test_the_decision_is_cached_per_workload(monkeypatch, tmp_path):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    first = choose(CPU, "auto", "auto", tiny_workload(), timer=FakeTimer({"fp32": 1.0, "fp32+cl": 2.0}), cache=tmp_path)
    again = choose(CPU, "auto", "auto", tiny_workload(), timer=Refuses(), cache=tmp_path)
    assert again.cached and again.chosen == first.chosen and again.step_seconds == first.step_seconds
    other_batch = FakeTimer({"fp32": 2.0, "fp32+cl": 1.0})
    assert choose(CPU, "auto", "auto", tiny_workload(batch=4), timer=other_batch, cache=tmp_path).chosen.name == "fp32+cl"
    assert set(other_batch.timed) == {"fp32", "fp32+cl"}, "another batch size is another measurement"


def test_the_real_timer_measures_each_candidate(monkeypatch, tmp_path):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    decision = choose(CPU, "auto", "auto", tiny_workload(), cache=tmp_path)
    assert set(decision.step_seconds) == {"fp32", "fp32+cl"} and all(s > 0 for s in decision.step_seconds.values())
    assert decision.chosen.name in decision.step_seconds
    assert "chosen by timing a training step" in decision.describe()


def test_a_bad_override_is_one_line(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "yes")
    with pytest.raises(Exception, match=rf"\${NATIVE_BF16_ENV}='yes': expected 0 or 1"):
        compute_choice.native_bf16_cpu()


def _timing_workload(recipe_path, plugins):
    """The workload ``bench run`` times for a tiny recipe on the tiny set (64x40 padded to 64x64)."""
    from harness.engine.assembly import Assembly
    from harness.recipe.schema import load_recipe

    recipe = load_recipe(recipe_path, plugins)
    return Assembly(recipe, plugins).timing_workload(64, 64, recipe.train.batch_size)


def test_bench_run_records_the_decision_and_obeys_a_fixed_recipe(bench, plugins, synthetic_set, tiny_recipe, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    auto = tiny_recipe(tmp_path / "auto.toml", synthetic_set, name="auto", epochs=1,
                       extra="").read_text().replace('precision = "fp32"\nchannels_last = false\n', "")
    (tmp_path / "auto.toml").write_text(auto)
    workload = _timing_workload(tmp_path / "auto.toml", plugins)
    # bf16 measured 4x faster than fp32: auto takes it, a recipe that says fp32 keeps fp32 and hears why
    timings = {"fp32": 4.0, "fp32+cl": 4.0, "bf16": 1.0, "bf16+cl": 1.1}
    choose(CPU, "auto", "auto", workload, timer=FakeTimer(timings), cache=tmp_path / "cache")

    ran = bench("run", tmp_path / "auto.toml", "--results", tmp_path / "results")
    assert ran.code == 0, ran.err
    assert "compute: bf16 chosen by timing a training step (cached measurement" in ran.out
    environment = json.loads(next((tmp_path / "results").glob("auto-*/environment.json")).read_text())
    assert (environment["precision"], environment["channels_last"]) == ("bf16", False)
    assert environment["compute_choice"]["step_seconds"] == timings and environment["cpu_capability"]

    fixed = tiny_recipe(tmp_path / "fixed.toml", synthetic_set, name="fixed", epochs=1)
    ran = bench("run", fixed, "--results", tmp_path / "results")
    assert ran.code == 0, ran.err
    assert "warning: train.precision/channels_last fix fp32, measured 4.0x slower per step than bf16" in ran.out
    environment = json.loads(next((tmp_path / "results").glob("fixed-*/environment.json")).read_text())
    assert (environment["precision"], environment["channels_last"]) == ("fp32", False)
    assert environment["compute_choice"] is None


def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(bench, synthetic_set, tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    recipe = tiny_recipe(tmp_path / "r.toml", synthetic_set, epochs=1)
    result = bench("run", recipe, "--set", "train.precision=bf16", "--results", tmp_path, "--estimate")
    assert result.code == 0, result.err
    assert "train.precision = 'bf16' on a CPU without native bf16" in result.out


@pytest.mark.skipif(not compute_choice.native_bf16_cpu(),
                    reason="this CPU has no native bf16 (it would be emulated, 10x slower)")
def test_a_bf16_run_trains(bench, synthetic_set, tiny_recipe, tmp_path):
    recipe = tiny_recipe(tmp_path / "r.toml", synthetic_set, epochs=2)
    result = bench("run", recipe, "--set", "train.precision=bf16", "--set", "train.channels_last=true",
                   "--results", tmp_path)
    assert result.code == 0, result.err
    summary = json.loads(next(tmp_path.glob("tiny-*/summary.json")).read_text())
    assert summary["device"].endswith("bf16, channels_last") and summary["oof_dice"] > 0.5


def test_tf32_flags_follow_the_recipe_on_cuda_and_are_left_alone_unset_or_on_a_cpu():
    """train.tf32 sets PyTorch's fp32 precision flags for CUDA (process-wide), only when stated."""
    from harness.engine.device import set_tf32, tf32_state

    cuda, before = torch.device("cuda"), (torch.backends.cudnn.conv.fp32_precision,
                                          torch.backends.cuda.matmul.fp32_precision)
    try:
        set_tf32(cuda, False)
        assert tf32_state(cuda) == {"convolutions": "ieee", "matmul": "ieee"}
        set_tf32(cuda, None)
        set_tf32(torch.device("cpu"), True)
        assert tf32_state(cuda) == {"convolutions": "ieee", "matmul": "ieee"}
        set_tf32(cuda, True)
        assert tf32_state(cuda) == {"convolutions": "tf32", "matmul": "tf32"}
        assert tf32_state(torch.device("cpu")) is None
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before
