"""Writing behind a block group (`emflow.tasks.write_behind`): the work goes on beside the caller,
one piece at a time and in order, and what it raises reaches the caller. The stages that write
behind their blocks are tested in tests/test_predict_workflow.py."""

import errno
import threading

import pytest

from emflow.tasks.write_behind import WriteBehind


def test_work_goes_on_beside_the_caller_in_order_one_piece_at_a_time():
    done, handed_over = [], threading.Event()

    def piece(number: int) -> None:
        if number == 0:
            # The caller is not held up by a piece in flight: it hands over the next one first.
            assert handed_over.wait(timeout=10), "the caller waited for the piece in flight"
        done.append(number)

    with WriteBehind(True) as behind:
        behind.submit(lambda: piece(0))
        assert done == []
        handed_over.set()
        for number in range(1, 5):
            behind.submit(lambda number=number: piece(number))
            # One piece in flight at a time: handing over one waited for the one before it.
            assert done == list(range(number))
    assert done == list(range(5))


def test_what_a_piece_raises_is_raised_in_the_caller_and_a_piece_runs_at_once_when_not_enabled():
    def fails() -> None:
        raise OSError(errno.EIO, "input/output error")

    behind = WriteBehind(True)
    behind.submit(fails)
    with pytest.raises(OSError, match="input/output error"):
        behind.submit(lambda: None)
    with pytest.raises(OSError, match="input/output error"), WriteBehind(True) as other:
        other.submit(fails)
    ran = []
    inline = WriteBehind(False)
    inline.submit(lambda: ran.append(threading.current_thread()))
    assert ran == [threading.current_thread()]
    with pytest.raises(OSError):
        inline.submit(fails)
