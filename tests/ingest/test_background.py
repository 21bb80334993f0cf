"""The background writer: order, bounded queue, errors surface in the submitting thread."""

from __future__ import annotations

import threading
import time

import pytest

from actstore.ingest.background import BackgroundWriter


def test_items_are_written_in_order_on_another_thread():
    seen, threads = [], set()

    def write(item):
        time.sleep(0.002)
        seen.append(item)
        threads.add(threading.current_thread().name)

    with BackgroundWriter(write, depth=1) as w:
        for i in range(20):
            w.submit(i)
    assert seen == list(range(20)) and threads == {"actstore-writer"}


def test_queue_is_bounded():
    release = threading.Event()
    w = BackgroundWriter(lambda item: release.wait(), depth=1)
    w.submit(0)  # taken by the thread, which now blocks
    time.sleep(0.05)
    w.submit(1)  # fills the queue
    blocked = threading.Thread(target=w.submit, args=(2,))
    blocked.start()
    time.sleep(0.3)
    assert blocked.is_alive()  # a third item waits: at most 1 in flight + depth queued
    release.set()
    blocked.join(5)
    w.close()


def test_writer_error_is_raised_in_the_submitting_thread():
    def write(item):
        if item == 3:
            raise OSError("disk full")

    w = BackgroundWriter(write, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(100):
            w.submit(i)
            time.sleep(0.01)
    w.close(abort=True)
    w2 = BackgroundWriter(write, depth=2)
    for i in range(4):
        w2.submit(i)
    with pytest.raises(OSError, match="disk full"):
        w2.close()


def test_inline_mode_writes_immediately():
    seen = []
    w = BackgroundWriter(seen.append, threaded=False)
    w.submit("a")
    assert seen == ["a"]
    w.close()
