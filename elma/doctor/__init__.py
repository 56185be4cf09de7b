"""``elma doctor``: what a new board has and lacks to answer questions, each line with the command that fixes it.

Device side: standard library and numpy only; onnxruntime, tensorrt, the CUDA bindings, jtop and pyvisa are
imported inside the checks that look for them. Every hardware path is injected (``DoctorConfig``) so the
checks run against fixture trees and stand-in commands in tests.
"""

from elma.doctor.report import MISSING, OK, WRONG, Check, DoctorReport
from elma.doctor.run import DoctorConfig, run_doctor

__all__ = ["OK", "MISSING", "WRONG", "Check", "DoctorReport", "DoctorConfig", "run_doctor"]
