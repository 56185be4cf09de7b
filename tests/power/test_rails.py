"""Board-total rules per device, and that ``import elma.power`` stays light (jtop and pyvisa load only on start)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from elma.power import TotalRule, board_total_mw, total_rule_for


@pytest.mark.parametrize("rails,rule_name,total", [
    ({"VDD_IN": 5000, "VDD_CPU_GPU_CV": 800, "VDD_SOC": 1400}, "VDD_IN", 5000),  # Xavier NX, Orin NX/Nano
    ({"POM_5V_IN": 1750, "POM_5V_GPU": 300, "POM_5V_CPU": 366}, "POM_5V_IN", 1750),  # Nano: GPU/CPU are inside IN
    ({"VDD_IN": 3140, "VDD_SYS_CPU": 536, "VDD_SYS_GPU": 153, "VDD_4V0_WIFI": 633}, "VDD_IN", 3140),  # TX2
    ({"VDD_GPU_SOC": 2340, "VDD_CPU_CV": 390, "VIN_SYS_5V0": 4025, "VDDQ_VDD2_1V8AO": 301}, "AGX Orin top-level rails", 6755),
    ({"GPU": 1, "CPU": 2, "SOC": 3, "CV": 4, "VDDRQ": 5, "SYS5V": 6}, "AGX Xavier top-level rails", 21),
])
def test_total_rules(rails, rule_name, total):
    value, rule = board_total_mw(rails)
    assert rule.name == rule_name and value == total


@pytest.mark.parametrize("rails", [
    {"VDD_CPU": 1.0, "VDD_GPU": 2.0},  # no input rail, not a known top-level set
    {"VDD_GPU_SOC": 1.0, "VDD_CPU_CV": 2.0},  # AGX Orin with VIN_SYS_5V0 missing: a partial sum would be wrong
    {"GPU": 1, "CPU": 2, "SOC": 3},  # AGX Xavier with three of six rails
])
def test_no_documented_rule_means_no_total(rails):
    assert total_rule_for(rails) is None
    assert board_total_mw(rails) == (None, None)


def test_explicit_rule_and_missing_rail():
    rule = TotalRule("bench supply", ("CH1", "CH2"))
    assert board_total_mw({"CH1": 1000.0, "CH2": 250.0}, rule) == (1250.0, rule)
    assert rule.total_mw({"CH1": 1000.0}) is None


def test_import_is_light():
    code = "import sys, elma.power; print(sorted(m for m in ('jtop', 'pyvisa', 'pyvisa_py', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
