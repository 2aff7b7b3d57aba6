"""The SIGTERM/SIGINT handler of the train loop (`vitx.train.preemption.StopFlag`)."""

from __future__ import annotations

import contextlib
import io
import signal
import sys

from vitx.train import preemption


class _NoWrites(io.StringIO):
    def write(self, s: str) -> int:
        raise AssertionError(f"the signal handler wrote {s!r}")


def test_handler_only_sets_the_flag_and_the_loop_says_it_at_the_next_check():
    """A handler that prints can land inside the loop's own `print` (same thread) and raise
    "RuntimeError: reentrant call inside <_io.BufferedWriter name=1>" (seen in the suite):
    the handler writes nothing; `should_stop` prints the notice once."""
    flag = preemption.StopFlag()
    assert not flag.should_stop(0)
    old, sys.stdout = sys.stdout, _NoWrites()
    try:
        flag._handle(signal.SIGTERM, None)
    finally:
        sys.stdout = old
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert flag.should_stop(1) and flag.should_stop(2)
    assert out.getvalue() == (f"vitx: got signal {int(signal.SIGTERM)}; saving a checkpoint "
                              "and stopping\n")
