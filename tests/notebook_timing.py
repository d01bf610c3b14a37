"""pytest plugin: time each chapter notebook under nbval and print the total against the CI budget."""

from collections import defaultdict

BUDGET_S = 25 * 60
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
    if total > BUDGET_S:
        tr.write_line("WARNING: the chapters exceed the CI notebook budget")
