"""Bounded memory: a long buffered map keeps the client's and the embedded broker's memory flat."""

from __future__ import annotations

import itertools

import psutil
import pytest

from scoopexec import ScoopExecutor


@pytest.mark.timeout(300)
def test_buffered_map_keeps_client_and_broker_memory_flat():
    # 200,000 items through map(buffersize=256): if finished futures, tasks or results were kept
    # anywhere (client, broker bookkeeping, result buffers) the process would grow by well over
    # 100 MB; windowing keeps the growth after warm-up to a few MB.
    me = psutil.Process()
    warm, total = 20_000, 200_000
    peak_tasks = 0
    with ScoopExecutor(2) as ex:
        broker = ex._session.broker
        results = ex.map(abs, itertools.count(), chunksize=8, buffersize=256)
        for i, r in enumerate(itertools.islice(results, total)):
            assert r == i
            if i == warm:
                rss_warm = me.memory_info().rss
            if i % 997 == 0:
                peak_tasks = max(peak_tasks, len(broker.ledger.tasks))
        rss_end = me.memory_info().rss
        del results
        # 256 chunks in flight at most, whatever the length of the input.
        assert peak_tasks <= 256, peak_tasks
    growth = (rss_end - rss_warm) / 2**20
    assert growth < 40, f"client grew by {growth:.1f} MiB over {total - warm} items"
