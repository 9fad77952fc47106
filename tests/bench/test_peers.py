"""The pure parts of bench.peers: figures, the table and the last line (the peers never run here)."""
from __future__ import annotations

import re

import pytest

from bench.peers import (
    Figures,
    floor_line,
    format_table,
    median,
    percentile,
    ratio,
    rotated,
    stat_cpu,
    summary_line,
)

LAST_LINE = re.compile(r"peers: ours/celery=(\S+) ours/dramatiq=(\S+) ours_lean/dramatiq=(\S+) ours/floor=(\S+) "
                       r"ours_lean/floor_lean=(\S+) p50_ours/p50_celery=(\S+)")


def figures(**e2e_and_p50: tuple[list[float | None], list[float | None]]) -> dict[str, Figures]:
    return {name: Figures(e2e=e2e, p50=p50) for name, (e2e, p50) in e2e_and_p50.items()}


@pytest.mark.parametrize(("q", "expected"), [(50, 50), (99, 99), (100, 100), (1, 1), (0.5, 1), (99.5, 100)])
def test_percentile_is_nearest_rank_of_measured_values(q: float, expected: int) -> None:
    values = list(range(100, 0, -1))  # unsorted on purpose
    assert percentile(values, q) == expected


def test_percentile_of_few_values() -> None:
    assert percentile([3.0], 99) == 3.0
    assert percentile([5.0, 1.0, 9.0, 7.0], 50) == 5.0  # rank ceil(0.5 * 4) = 2 of 1, 5, 7, 9
    assert percentile([5.0, 1.0, 9.0, 7.0], 99) == 9.0


@pytest.mark.parametrize("q", [0, -1, 100.5])
def test_percentile_refuses_ranks_outside_its_range(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0, 2.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_median_skips_failed_rounds() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([4.0, None, 2.0]) == 3.0
    assert median([None, None]) is None
    assert median([]) is None


def test_ratio_of_a_missing_figure_is_missing() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0.0) is None


def test_summary_line_has_the_exact_format_with_end_to_end_medians() -> None:
    line = summary_line(figures(ours=([2000.0, 3000.0, 2500.0], [2.0, 4.0, 3.0]),
                                ours_lean=([5000.0, 6000.0, None], [1.0, 1.0, 1.0]),
                                celery=([1000.0, 1250.0, 900.0], [1.0, 2.0, 1.5]),
                                dramatiq=([5000.0, 4000.0, 4500.0], [8.0, 8.0, 8.0]),
                                rq=([500.0, None, 1000.0], [20.0, 30.0, 40.0]),
                                floor=([4000.0, 3000.0, 5000.0], [1.0, 1.0, 1.0]),
                                floor_lean=([11000.0, 10000.0, 12000.0], [1.0, 1.0, 1.0])))
    assert line == ("peers: ours/celery=2.50 ours/dramatiq=0.56 ours_lean/dramatiq=1.22 ours/floor=0.62 "
                    "ours_lean/floor_lean=0.50 p50_ours/p50_celery=2.00")
    assert LAST_LINE.fullmatch(line)


def test_summary_line_names_every_ratio_even_when_a_system_was_not_measured() -> None:
    line = summary_line(figures(ours=([2000.0], [2.0]), celery=([None], [None])))
    assert line == ("peers: ours/celery=n/a ours/dramatiq=n/a ours_lean/dramatiq=n/a ours/floor=n/a "
                    "ours_lean/floor_lean=n/a p50_ours/p50_celery=n/a")
    assert LAST_LINE.fullmatch(line)


def test_table_shows_medians_and_ours_over_each_system() -> None:
    table = format_table({"ours": Figures(e2e=[3000.0, 2000.0, 2500.0], drain=[4000.0], enqueue=[6000.0],
                                          p50=[3.0], p99=[6.25], cpu=[400.0, 300.0, 350.0]),
                          "celery": Figures(e2e=[1000.0], drain=[2000.0], enqueue=[3000.0], p50=[1.5], p99=[2.0],
                                            cpu=[1400.0])})
    lines = table.splitlines()
    assert lines[0].split() == ["system", "end", "to", "end/s", "drain/s", "enqueue/s", "p50", "ms", "p99", "ms",
                                "CPU", "us/task", "ours/it", "e2e", "ours/it", "drain", "p50", "ours/it", "CPU",
                                "ours/it"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["ours", "2,500", "4,000", "6,000", "3.0", "6.2", "350", "1.00", "1.00", "1.00",
                                "1.00"]
    assert lines[3].split() == ["celery", "1,000", "2,000", "3,000", "1.5", "2.0", "1,400", "2.50", "2.00", "2.00",
                                "0.25"]
    assert len({len(line) for line in lines}) == 1  # columns line up


def test_table_marks_what_failed() -> None:
    table = format_table({"ours": Figures(e2e=[None], drain=[None], enqueue=[None], p50=[None], p99=[None],
                                          cpu=[None])})
    assert table.splitlines()[2].split() == ["ours"] + ["n/a"] * 10


@pytest.mark.parametrize(("index", "expected"), [(0, ["a", "b", "c"]), (1, ["b", "c", "a"]), (2, ["c", "a", "b"]),
                                                 (3, ["a", "b", "c"])])
def test_rounds_rotate_the_order_of_the_systems(index: int, expected: list[str]) -> None:
    assert rotated(["a", "b", "c"], index) == expected


def test_cpu_ticks_are_read_after_the_command_name_whatever_it_holds() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    stat = "4242 (gunicorn: worker) [x)) S 4200 4100 4100 0 -1 4194560 900 0 0 0 1234 567 3 4 20 0 9 0\n"
    assert stat_cpu(stat) == (4100, 1234 + 567)


def test_floor_line_gives_medians_and_the_floor_over_each_peer_measured() -> None:
    figures = {"floor": Figures(e2e=[3000.0, 2000.0, 2500.0], drain=[4000.0, 5000.0, 4500.0],
                                cpu=[400.0, 300.0, 350.0]),
               "dramatiq": Figures(e2e=[2500.0, 2000.0, 1000.0], drain=[2000.0, 2250.0, 2500.0],
                                   cpu=[700.0, 700.0, 700.0])}
    line = floor_line(figures)
    assert line.startswith("floor (") and "gunicorn" in line
    assert "end to end 2,500/s, drain 4,500/s, CPU 350 us/task" in line
    assert line.endswith("; floor/dramatiq: end to end 1.25, drain 2.00, CPU 0.50") and "celery" not in line


def test_the_lean_floor_line_names_its_server_and_its_ratios() -> None:
    figures = {"floor_lean": Figures(e2e=[9000.0], drain=[10000.0], cpu=[170.0]),
               "dramatiq": Figures(e2e=[4500.0], drain=[5000.0], cpu=[340.0])}
    line = floor_line(figures, "floor_lean")
    assert line.startswith("floor_lean (") and "granian" in line and "gunicorn" not in line
    assert line.endswith("; floor_lean/dramatiq: end to end 2.00, drain 2.00, CPU 0.50")
