"""Every test carries exactly one kind marker (unit, contract, integration, results): tests/conftest.py's
collection hook, checked on a scratch suite."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit

HOOK = "from tests.conftest import pytest_pycollect_makeitem  # noqa: F401\n"
MARKERS = "[pytest]\nmarkers =\n" + "".join(f"    {kind}: {kind}\n" for kind in ("unit", "contract", "integration",
                                                                                    "results"))

SORTED = """
import pytest

pytestmark = pytest.mark.unit


def test_by_its_file():
    pass


class TestGroup:
    def test_in_a_class(self):
        pass
"""

PER_TEST = """
import pytest


@pytest.mark.parametrize("x", [1, 2])
@pytest.mark.integration
def test_per_test(x):
    pass


@pytest.mark.results
def test_another():
    pass
"""

UNMARKED = """
def test_forgotten():
    pass
"""

TWO_KINDS = """
import pytest

pytestmark = pytest.mark.unit


@pytest.mark.integration
def test_both():
    pass
"""


def scratch_suite(pytester, **files: str) -> None:
    pytester.makeconftest(HOOK)
    pytester.makeini(MARKERS)
    pytester.makepyfile(**files)


def test_a_test_without_exactly_one_kind_stops_the_run_naming_it_whatever_m_selects(pytester):
    scratch_suite(pytester, test_sorted=SORTED, test_unmarked=UNMARKED, test_two=TWO_KINDS)
    result = pytester.runpytest("-m", "results", "-p", "no:xdist")  # selects none of the faulty tests
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=2, deselected=2)
    result.stdout.fnmatch_lines(["*test_two.py::test_both carries the kind markers integration, unit: *",
                                 "*test_unmarked.py::test_forgotten carries no kind marker: give it exactly one of "
                                 "unit, contract, integration, results*"])


def test_a_file_or_each_test_marks_its_kind_and_m_selects_by_it(pytester):
    scratch_suite(pytester, test_sorted=SORTED, test_per_test=PER_TEST)
    pytester.runpytest("-p", "no:xdist", "-m", "unit").assert_outcomes(passed=2, deselected=3)
    pytester.runpytest("-p", "no:xdist", "-m", "integration or results").assert_outcomes(passed=3, deselected=2)
