"""pytest plugin: time each chapter notebook under nbval and print the total against the CI budget."""

import time
from collections import defaultdict

# Parts I-VI together (issue 7). A chapter that waits on another's training lock
# (29 on 28, 34 on 33, with a cold cache) counts that wait too, so the sum can
# exceed the wall time of the two workers by much.
BUDGET_S = 40 * 60
_START = time.perf_counter()
_durations: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    if report.when == "call" and ".ipynb::" in report.nodeid:
        _durations[report.nodeid.split("::")[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _durations:
        return
    tr = terminalreporter
    tr.section("notebook time")
    for name, seconds in sorted(_durations.items()):
        tr.write_line(f"{seconds:7.1f} s  {name}")
    total = sum(_durations.values())
    tr.write_line(f"{total:7.1f} s  total (summed over workers; budget {BUDGET_S // 60} min)")
    tr.write_line(f"{time.perf_counter() - _START:7.1f} s  wall time of this run")
    if total > BUDGET_S:
        tr.write_line("WARNING: the chapters exceed the CI notebook budget")
