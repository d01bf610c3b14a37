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


# With a cold cache the notebook run is as long as its critical path: chapter 28's pretraining
# (about 15 minutes on one core) and the chapters that load its model. So the chapters that train a
# model others load start first, those that load one come last, and the other worker runs every
# independent chapter meanwhile (measured: 29 minutes of wall time in xdist's default order, which
# puts the longest notebooks first, so chapter 33 trained while chapter 36 waited on its lock).
TRAIN_FIRST = ("28-", "34-")
LOAD_LAST = ("33-", "36-", "35-", "32-", "31-", "29-", "30-")  # the longest first


def _chapter_rank(nodeid: str) -> tuple[int, int]:
    stem = nodeid.split("::")[0].rsplit("/", 1)[-1]
    if stem.startswith(TRAIN_FIRST):
        return (0, 0)
    loads = [k for k, prefix in enumerate(LOAD_LAST) if stem.startswith(prefix)]
    return (2, loads[0]) if loads else (1, 0)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist >= 3.7: keep our order below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: _chapter_rank(item.nodeid))  # stable: cells keep their order


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
