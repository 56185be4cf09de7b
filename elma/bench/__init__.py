"""``elma-bench``: accuracy, exits, latency, memory and a roofline for one model on one SQuAD 2.0 file.

    from elma.bench import BenchConfig, run_bench
    report = run_bench(BenchConfig(model="bundles/minilm", data="dev-v2.0.json", policy="entropy:0.4,0.4"))

The library returns a ``BenchReport`` (dataclasses all the way down) and writes
nothing but what ``write_report`` is asked to write; the CLI (``elma.bench.cli``)
prints.
"""

from elma.bench.report import BenchReport, write_report  # noqa: F401
from elma.bench.runner import BenchConfig, run_bench  # noqa: F401
