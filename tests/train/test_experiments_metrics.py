"""Epochs to target, the tuning score and the preset checks, on inputs with known answers."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certunlearn_train.experiments.metrics import (
    accuracy_at,
    epochs_to_target,
    mean_spread,
    validation_score,
    wall_to_target,
)
from certunlearn_train.experiments.presets import (
    METHOD_NAMES,
    PRESETS,
    ExperimentConfigError,
    get_preset,
    method_configs,
    validate_experiment,
)
from tests.hypothesis_budget import examples


def curve(pairs, start=0.0):
    """Points at epochs start, start+1, ... with the given test accuracies (val = test / 2)."""
    return [{"epochs": start + i, "test_acc": a, "val_acc": a / 2, "wall_s": 10.0 * (i + 1)}
            for i, a in enumerate(pairs)]


def test_never_reached_is_none():
    c = curve([0.1, 0.5, 0.8, 0.89])
    assert epochs_to_target(c, 0.9) is None
    assert wall_to_target(c, 0.9) is None


def test_reached_at_the_noisy_phase_counts_its_fractional_epochs():
    # noisy phase of T = 10 steps of 64 on 1030 retained points: 0.6214 epochs, already at 0.95
    noisy = 10 * 64 / 1030
    c = curve([0.95, 0.96, 0.97], start=noisy)
    assert epochs_to_target(c, 0.95) == pytest.approx(noisy)
    assert wall_to_target(c, 0.95) == 10.0


def test_fractional_noisy_epochs_shift_every_later_point():
    noisy = 2.5
    c = curve([0.2, 0.6, 0.85, 0.91, 0.93], start=noisy)
    assert epochs_to_target(c, 0.9) == pytest.approx(5.5)  # reached 3 passes after the phase
    assert epochs_to_target(c, 0.6) == pytest.approx(3.5)  # equality counts as reached
    assert epochs_to_target(c, 0.0) == pytest.approx(2.5)


def test_first_crossing_not_the_last():
    c = curve([0.5, 0.92, 0.80, 0.95])
    assert epochs_to_target(c, 0.9) == 1.0


def test_nan_accuracy_never_reaches():
    c = curve([math.nan, 0.95])
    assert epochs_to_target(c, 0.9) == 1.0


def test_bad_curves_are_refused():
    with pytest.raises(ValueError, match="sorted"):
        epochs_to_target([{"epochs": 2, "test_acc": 0.1}, {"epochs": 1, "test_acc": 0.2}], 0.5)
    with pytest.raises(ValueError, match="epochs must be a number"):
        epochs_to_target([{"epochs": -1, "test_acc": 0.1}], 0.5)
    with pytest.raises(ValueError, match="target"):
        epochs_to_target(curve([0.1]), math.nan)


def test_validation_score_known_values():
    # val accuracies 0.1, 0.2, 0.3 at epochs 0, 1, 2; budget 4: epochs 1..4 see 0.2, 0.3, 0.3, 0.3
    c = curve([0.2, 0.4, 0.6])
    assert validation_score(c, 4) == pytest.approx((0.2 + 0.3 + 0.3 + 0.3) / 4)
    # a noisy phase of 1.5 epochs: epoch 1 sees nothing yet (0), epoch 2 the phase's result
    c = curve([0.2, 0.4], start=1.5)
    assert validation_score(c, 3) == pytest.approx((0.0 + 0.1 + 0.2) / 3)
    assert accuracy_at(c, 1.0) == 0.0
    with pytest.raises(ValueError, match="budget"):
        validation_score(c, 0)


def test_mean_spread_ignores_unreached():
    m, s, got, n = mean_spread([2.0, None, 4.0])
    assert (m, got, n) == (3.0, 2, 3)
    assert s == pytest.approx(math.sqrt(2.0))
    assert math.isnan(mean_spread([None, None])[0])


@settings(max_examples=examples(40))
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.floats(0, 3),
       st.floats(0, 1), st.floats(0, 1))
def test_epochs_to_target_is_monotone_in_the_target(accs, start, t1, t2):
    c = curve(accs, start=start)
    lo, hi = sorted((t1, t2))
    e_lo, e_hi = epochs_to_target(c, lo), epochs_to_target(c, hi)
    if e_hi is not None:
        assert e_lo is not None and e_lo <= e_hi
    # the answer is the first point at or above the target, found independently here
    first = next((start + i for i, a in enumerate(accs) if a >= hi), None)
    assert e_hi == (None if first is None else pytest.approx(first))


# ------------------------------------------------------------------------------------------------
# presets
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_method_gets_the_same_number_of_configurations(name):
    overrides = {} if PRESETS[name]["data"]["name"] == "digits" else {"data_root": "/nowhere"}
    cfg = get_preset(name, **overrides)
    counts = {m: len(method_configs(cfg, m)) for m in METHOD_NAMES}
    assert set(counts.values()) == {cfg["n_configs"]}, counts
    for m in METHOD_NAMES:  # distinct configurations
        configs = method_configs(cfg, m)
        assert len({tuple(sorted(c.items())) for c in configs}) == len(configs)
    assert cfg["seeds"] >= 3
    assert not set(cfg["tune_seeds"]) & set(range(cfg["seeds"]))


def test_random_subset_when_the_grid_is_larger():
    cfg = get_preset("digits")
    cfg["grids"]["retrain"] = {"lr": [0.01, 0.02, 0.05, 0.1, 0.2], "batch_size": [16, 32, 64]}
    cfg = validate_experiment(cfg)
    a = method_configs(cfg, "retrain")
    assert len(a) == cfg["n_configs"] and a == method_configs(cfg, "retrain")


@pytest.mark.parametrize("change, match", [
    (dict(seeds=0), "'seeds' must be an integer > 0, got 0"),
    (dict(tune_seeds=[1]), "tune_seeds"),
    (dict(main_eps=3.0), "main_eps"),
    (dict(delta=1.5), "delta"),
    (dict(colour="red"), "unknown experiment key"),
    (dict(n_configs=100), "grids.gradient_clipping"),
    (dict(targets=[-1]), "targets"),
])
def test_bad_configurations_name_the_key(change, match):
    cfg = dict(PRESETS["digits"], **change)
    with pytest.raises(ExperimentConfigError, match=match):
        validate_experiment(cfg)


def test_bad_grid_value_and_missing_knob():
    cfg = get_preset("digits")
    cfg["grids"]["model_clipping"]["C2"] = [-1.0]
    with pytest.raises(ExperimentConfigError, match="grids.model_clipping.C2"):
        validate_experiment(cfg)
    cfg = get_preset("digits")
    del cfg["grids"]["retrain_init_scale"]["init_scale"]
    with pytest.raises(ExperimentConfigError, match="grids.retrain_init_scale"):
        validate_experiment(cfg)


def test_image_presets_need_a_data_root():
    with pytest.raises(ExperimentConfigError, match="data.root"):
        get_preset("mnist")


def test_config_file_replaces_preset_keys(tmp_path):
    from certunlearn_train.experiments.presets import load_config_file
    p = tmp_path / "exp.yaml"
    p.write_text("preset: digits-quick\nseeds: 4\ndelta: 1e-6\n"
                 "grids:\n  retrain: {lr: [0.1, 0.2], batch_size: [64]}\n")
    cfg = load_config_file(str(p))
    assert cfg["seeds"] == 4 and cfg["delta"] == 1e-6
    assert cfg["grids"]["retrain"]["lr"] == [0.1, 0.2]
    assert cfg["grids"]["gradient_clipping"] == PRESETS["digits-quick"]["grids"][
        "gradient_clipping"]
    p.write_text("preset: nope\n")
    with pytest.raises(ExperimentConfigError, match="preset must be one of"):
        load_config_file(str(p))


def test_comparison_line_known_answers():
    from certunlearn_train.experiments.metrics import comparison_line
    retrain = [0.3, 0.8, 0.9, 0.95, 0.96]  # target 0.95: retraining needs 4 epochs
    line = comparison_line(0.5, 0.1, [0.5, 0.96], 0.1, [0.5, 0.6, 0.96], retrain)
    assert "(0.950)" in line and "unlearning 2.50" in line and "retraining 4.00" in line
    assert "control (same pipeline from zero) 3.50" in line
    assert "1.00 epochs fewer than the control in this run" in line
    assert "saving" not in line.replace("not a measured saving", "")
    # slower than the control, or equal: no gain, whatever retraining needed
    assert "no gain over the control in this run" in comparison_line(
        0.5, 0.1, [0.5, 0.6, 0.96], 0.1, [0.96], retrain)
    assert "no gain over the control in this run" in comparison_line(
        0.5, 0.1, [0.96], 0.1, [0.96], retrain)
    never = comparison_line(0.5, 0.1, [0.5, 0.6], 0.1, [0.96], retrain)
    assert "unlearning never within 2.5" in never and "no gain over the control measured" in never
    assert "unlearning 0.50" in comparison_line(0.5, 0.99, [0.5], 0.1, [0.5], retrain)
    with pytest.raises(ValueError, match="retrain_accs"):
        comparison_line(0.5, 0.1, [0.5], 0.1, [0.5], [])
