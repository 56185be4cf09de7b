"""The result of ``elma doctor``: one ``Check`` per line, and the verdict (which backend can answer)."""

import json
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

OK, MISSING, WRONG = "OK", "MISSING", "WRONG"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str  # e.g. "tensorrt", "power: tegrastats"
    status: str  # OK, MISSING (not there) or WRONG (there, but unusable as it is)
    detail: str  # what was found (a version, a sample) or what is wrong
    fix: str = ""  # the command or step that fixes it; empty when OK
    sample: Optional[Dict[str, Any]] = None  # power sources: one reading (rail_power_mw, total_power_mw)

    def __post_init__(self) -> None:
        if self.status not in (OK, MISSING, WRONG):
            raise ValueError(f"status must be OK, MISSING or WRONG (got {self.status!r})")

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass(frozen=True)
class DoctorReport:
    checks: List[Check]
    best_backend: str  # the backend this board should answer with ("tensorrt")
    backends: Dict[str, bool]  # backend -> can answer here
    exit_code: int  # 0: the best backend can answer; 3: it cannot
    elapsed_s: float = 0.0

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def missing(self) -> List[str]:
        return [c.name for c in self.checks if c.status == MISSING]

    @property
    def wrong(self) -> List[str]:
        return [c.name for c in self.checks if c.status == WRONG]

    def to_json(self) -> str:
        body = {"exit_code": self.exit_code, "best_backend": self.best_backend, "backends": self.backends,
                "missing": self.missing, "wrong": self.wrong, "elapsed_s": round(self.elapsed_s, 3),
                "checks": [asdict(c) for c in self.checks]}
        return json.dumps(body, indent=2)

    def to_text(self) -> str:
        width = max(len(c.name) for c in self.checks) if self.checks else 0
        lines = []
        for c in self.checks:
            lines.append(f"{c.status:<8}{c.name:<{width}}  {c.detail}")
            if c.fix:
                lines.append(f"{'':<8}{'':<{width}}  fix: {c.fix}")
        ready = [name for name, can in self.backends.items() if can]
        verdict = (f"ready: the {self.best_backend} backend can answer" if self.exit_code == 0 else
                   f"not ready: the {self.best_backend} backend cannot answer here"
                   + (f" (meanwhile: --backend {ready[0]})" if ready else ""))
        lines.append(verdict)
        return "\n".join(lines)
