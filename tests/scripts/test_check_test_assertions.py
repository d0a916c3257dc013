"""scripts/check_test_assertions.py: the `make lint` check that every test function asserts something."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_test_assertions.py"

_spec = importlib.util.spec_from_file_location("check_test_assertions", SCRIPT)
assert _spec and _spec.loader
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def flagged(source: str) -> list[str]:
    return [name for _, name in check.offenders(textwrap.dedent(source))]


def test_assert_statement_pytest_raises_and_fail_count() -> None:
    assert flagged("""
        import pytest
        from pytest import raises

        def test_plain():
            assert 1 + 1 == 2

        def test_nested_block():
            for x in range(3):
                with open("f") as f:
                    if x:
                        assert f

        def test_raises():
            with pytest.raises(ValueError):
                int("x")

        def test_raises_bare():
            raises(ValueError, int, "x")

        def test_fail():
            pytest.fail("never")

        async def test_async():
            assert await thing()
    """) == []


def test_nested_functions_the_test_surely_runs_count() -> None:
    assert flagged("""
        import asyncio

        def test_called_through_asyncio_run(tmp_path):
            async def scenario():
                assert tmp_path
            asyncio.run(scenario())

        def test_handed_to_a_runner():
            async def scenario():
                assert True
            run(scenario)

        def test_called_inside_a_block():
            def check():
                if True:
                    assert_something()
            for _ in range(2):
                check()
    """) == []


def test_asserting_helpers_by_name_count() -> None:
    assert flagged("""
        def test_helper(mock):
            assert_delivered(mock)

        def test_method(mock):
            mock.assert_called_once_with(1)
    """) == []


def test_functions_without_assertion_are_flagged() -> None:
    assert flagged("""
        def test_nothing():
            do_something()

        def test_only_waits(cp):
            wait_for(lambda: cp.ready(), timeout=30)

        def test_assert_only_in_a_callback(out):
            def check(value):
                assert value == 1
            out.apply(check)

        def test_assert_only_in_a_lambda(out):
            out.apply(lambda v: check_that(v))

        def test_nested_function_never_run():
            def check():
                assert True

        def test_raises_of_something_else(thing):
            thing.raises(ValueError)

        class TestGroup:
            def test_method(self):
                self.helper()

            def helper(self):
                assert True
    """) == ["test_nothing", "test_only_waits", "test_assert_only_in_a_callback", "test_assert_only_in_a_lambda",
             "test_nested_function_never_run", "test_raises_of_something_else", "test_method"]


def test_only_test_functions_are_checked() -> None:
    assert flagged("""
        def helper():
            pass

        class Helper:
            def test_not_collected(self):
                pass

        def fixture_like():
            yield
    """) == []


def test_command_line_reports_file_line_and_exit_status(tmp_path: Path) -> None:
    (tmp_path / "test_good.py").write_text("def test_ok():\n    assert True\n")
    (tmp_path / "helpers.py").write_text("def test_ignored():\n    pass\n")  # not a test module
    clean = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=False)
    assert (clean.returncode, clean.stdout) == (0, "")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "test_bad.py").write_text("import os\n\n\ndef test_silent():\n    os.getcwd()\n")
    dirty = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=False)
    assert dirty.returncode == 1
    assert dirty.stdout.startswith(f"{tmp_path / 'sub' / 'test_bad.py'}:4: test_silent asserts nothing")


def test_the_suite_passes_the_check() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), str(ROOT / "tests")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout
