"""Scenario files: the shipped ones load, bad ones are refused naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.scenario import SCENARIOS_DIR, ScenarioError, load_scenario


@pytest.mark.parametrize(
    "name", ["smoke", "show-scaled", "million-viewers", "sale-redis-kill", "replay-smoke"]
)
def test_the_shipped_scenarios_load(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.name == name and (SCENARIOS_DIR / f"{name}.toml").exists()
    assert scenario.sale is not None and scenario.slo.oversell == 0
    assert scenario.active_users >= scenario.sale.buyers


def test_the_join_curve_and_slices_add_up() -> None:
    scenario = load_scenario("smoke")  # 200 viewers at 100/s
    assert [scenario.viewers_at(t) for t in (-1, 0, 0.5, 1.99, 5, scenario.duration)] == [
        0,
        1,
        51,
        200,
        200,
        0,
    ]
    slices = [scenario.slice(i, 3) for i in range(3)]
    assert sum(s.viewers.peak for s in slices) == scenario.viewers.peak
    assert sum(s.viewers.join_rate for s in slices) == pytest.approx(scenario.viewers.join_rate)
    # Each slice's k-th viewer joins when its share of the curve reaches it.
    assert slices[0].join_time(66) == pytest.approx(scenario.join_time(66 * 3), rel=0.02)
    with pytest.raises(ValueError):
        scenario.slice(3, 3)


def test_random_decisions_repeat_for_the_same_seed_and_stream() -> None:
    scenario = load_scenario("smoke")
    assert scenario.rng("viewer", 5).random() == scenario.rng("viewer", 5).random()
    assert scenario.rng("viewer", 5).random() != scenario.rng("viewer", 6).random()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name="x"\nroom="r"\nduration=1\n[viewers]\npeak=1\njoin_rate=1\nsampel=1\n',
         "viewers: Object contains unknown field `sampel`"),
        ('name="x"\nroom="r"\nduration=1\n[viewers]\npeak=0\njoin_rate=1\n',
         "viewers.peak: Expected `int` >= 1"),
        ('name="x"\nroom="r"\nduration=-1\n[viewers]\npeak=1\njoin_rate=1\n',
         "duration: Expected `float` > 0"),
        ('name="x"\nroom="r"\nduration=5\n[viewers]\npeak=1\njoin_rate=1\n'
         '[sale]\nat=9\nsale_id="s"\nstock=1\nbuyers=1\n', "sale.at: 9.0 is after the show's end"),
        ('name="x"\nroom="r"\nduration=5\n[viewers]\npeak=1\njoin_rate=1\n'
         '[sale]\nat=1\nsale_id="s s"\nstock=1\nbuyers=1\n',
         "sale.sale_id: Expected `str` matching"),
        ("name = [\n", "not valid TOML"),
        ('name="x"\nroom="r"\nduration=5\n[viewers]\npeak=1\njoin_rate=1\n'
         '[[faults]]\nat=1\nkind="flood_redis"\n', "faults.kind: 'flood_redis' is not one of"),
        ('name="x"\nroom="r"\nduration=5\n[viewers]\npeak=1\njoin_rate=1\n'
         '[trace]\nfiles=["nowhere.jsonl"]\n', "trace.files: no trace file "),
        ('name="x"\nroom="r"\nduration=5\n[viewers]\npeak=1\njoin_rate=1\n'
         '[trace]\nfiles=[]\n', "trace.files: Expected `array` of length >= 1"),
    ],
)  # fmt: skip
def test_a_bad_scenario_names_the_setting(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def test_a_missing_scenario_is_a_clear_error() -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario("no-such-show")


def test_a_scaled_show_keeps_its_shape_and_round_trips(tmp_path: Path) -> None:
    big = load_scenario("million-viewers")
    small = big.scaled(0.01)
    assert small.viewers.peak == 10_000 and small.viewers.join_rate == pytest.approx(34)
    assert small.sale is not None and big.sale is not None
    assert (small.sale.stock, small.sale.buyers) == (100, 3000)
    assert small.users.commenters == 50 and small.duration == big.duration
    path = tmp_path / "small.toml"
    path.write_text(small.to_toml(), encoding="utf-8")
    assert load_scenario(path) == small
    with pytest.raises(ValueError):
        big.scaled(0)


def test_a_trace_scenario_finds_its_files_from_anywhere_and_scales(tmp_path: Path) -> None:
    """Trace files are relative to the scenario's file; the scenario as run (written into
    another folder, scaled) still finds them and scales the replayed viewers."""
    shipped = load_scenario("replay-smoke")
    assert shipped.trace is not None and shipped.active_users == 0
    (file,) = shipped.trace.files
    assert Path(file) == SCENARIOS_DIR / "traces" / "smoke.jsonl"
    doubled = shipped.scaled(2)
    assert doubled.trace is not None and doubled.trace.viewers == 2.0
    elsewhere = tmp_path / "as-run.toml"
    elsewhere.write_text(doubled.to_toml(), encoding="utf-8")
    assert load_scenario(elsewhere) == doubled
