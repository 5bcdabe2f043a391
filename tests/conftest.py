"""Suite-wide guards: a run that executed no test, or passed none, is a failure."""

_passed = 0


def pytest_runtest_logreport(report):
    global _passed
    if report.when == "call" and report.passed:
        _passed += 1


def pytest_sessionfinish(session, exitstatus):
    # exit 5 ("no tests ran") and an everything-skipped run must not look green.
    if exitstatus in (0, 5) and _passed == 0 and not session.config.option.collectonly:
        session.exitstatus = 1
        session.config.get_terminal_writer().line(
            "ERROR: no test passed (none ran, or all were skipped)", red=True)
