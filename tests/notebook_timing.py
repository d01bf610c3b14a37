"""pytest plugin: time each chapter notebook under nbval and print the total against the CI budget."""

import time
from collections import defaultdict

# Parts I-VI together (issue 7), measured as the wall time of the notebook run. The per-chapter
# sum is printed too, but it counts waiting: with a cold cache, the first chapter that needs
# chapter 28's model (or chapter 34's) trains it under a file lock and the others wait on that
# lock, so the same training minutes appear in several chapters' times.
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
    wall = time.perf_counter() - _START
    tr.write_line(f"{total:7.1f} s  summed over chapters (includes waits on training locks)")
    tr.write_line(f"{wall:7.1f} s  wall time of this run (budget {BUDGET_S // 60} min)")
    if wall > BUDGET_S:
        tr.write_line("WARNING: the chapters exceed the CI notebook budget")
