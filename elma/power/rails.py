"""Which rails make up the board's total power, per Jetson module.

Rules (sources in ../shared/JETSON-NOTES.md, section 1 "Which rail is the total"):

- ``VDD_IN`` is the module input on TX2, Xavier NX, Orin NX and Orin Nano (jetson_stats uses it as the total).
- ``POM_5V_IN`` on the Nano; ``POM_5V_GPU``/``POM_5V_CPU`` are inside it and are never added.
- AGX Xavier has no input rail: the total is the sum of its six top-level rails (jetson_stats ``total_power``).
- AGX Orin has no input rail: ``VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0``. ``VDDQ_VDD2_1V8AO`` is fed by
  ``VIN_SYS_5V0`` (connorimes/energymon JetsonPowerRails.md), so adding it would count it twice.
- Any other set of rails: no total (``None``); the per-rail figures are still reported. Nothing is guessed.
"""

from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

#: rail labels that are placeholders for an unconnected INA3221 channel (AGX Orin 0x41 has two)
SKIPPED_RAILS = frozenset({"NC"})

AGX_ORIN_TOP_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")
AGX_XAVIER_TOP_RAILS = ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V")


@dataclass(frozen=True)
class TotalRule:
    """How the board total is formed: the sum of ``rails`` (one rail for an input rail)."""

    name: str  # e.g. "VDD_IN" or "AGX Orin top-level rails"
    rails: Tuple[str, ...]

    def total_mw(self, rail_power_mw: Mapping[str, float]) -> Optional[float]:
        """Sum of the rule's rails, or ``None`` if one of them is missing from this sample."""
        total = 0.0
        for rail in self.rails:
            if rail not in rail_power_mw:
                return None
            total += rail_power_mw[rail]
        return total


def total_rule_for(rail_names: Iterable[str]) -> Optional[TotalRule]:
    """The board-total rule for a device that reports these rails, or ``None`` if the rails do not say.

    Args:
        rail_names: the rail names of one sample (tegrastats, INA3221 labels, jtop rails).

    Returns:
        A ``TotalRule``; ``None`` when no documented rule applies (the total is then left out, not guessed).
    """
    names = set(rail_names)
    for input_rail in ("VDD_IN", "POM_5V_IN"):
        if input_rail in names:
            return TotalRule(input_rail, (input_rail,))
    if set(AGX_ORIN_TOP_RAILS) <= names:
        return TotalRule("AGX Orin top-level rails", AGX_ORIN_TOP_RAILS)
    if set(AGX_XAVIER_TOP_RAILS) <= names:
        return TotalRule("AGX Xavier top-level rails", AGX_XAVIER_TOP_RAILS)
    return None


def board_total_mw(rail_power_mw: Mapping[str, float], rule: Optional[TotalRule] = None) -> Tuple[Optional[float], Optional[TotalRule]]:
    """Board total power of one sample, mW, with the rule used (``rule`` overrides the per-device rules)."""
    if rule is None:
        rule = total_rule_for(rail_power_mw)
    if rule is None:
        return None, None
    return rule.total_mw(rail_power_mw), rule


def drop_skipped(rail_power_mw: Dict[str, float]) -> Dict[str, float]:
    """The rails without the ``NC`` placeholders."""
    return {name: value for name, value in rail_power_mw.items() if name not in SKIPPED_RAILS}
