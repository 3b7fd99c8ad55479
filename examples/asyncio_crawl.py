"""An asyncio crawler-style fan-out on a scoopexec pool, with no network.

    python examples/asyncio_crawl.py [--workers N] [--sites S] [--pages P] [--cost SECONDS] [--concurrency C]

A crawler reads a page, finds its links, and reads those, many at once: an
asyncio program.  Here each "site" is a made-up graph of pages whose text is
generated from the page's address, and "fetching" a page is CPU work (making
the text, hashing it, extracting the links), so the fan-out runs on the pool:

* the client crawls the sites at once with ``async for report in
  ex.amap(crawl_site, sites)``, which yields each site's report as it is done;
* each ``crawl_site`` runs on a worker and is itself an asyncio program
  (``asyncio.run``): it fans out its page fetches as sub-tasks with
  ``loop.run_in_executor(executor, fetch, ...)``, at most ``--concurrency``
  in flight, following links until every reachable page is read.  Waiting
  parks the task, so the worker runs fetches meanwhile;
* finally the client ranks every page found, awaiting
  ``asyncio.wrap_future(ex.submit(rank, ...))``.

The same crawl is then run serially (fetch called in place) and the answers
compared: the pages found, their digests and the ranking.  Exits 1 if they differ.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sys
import time
from collections.abc import Awaitable, Callable

import scoopexec
from scoopexec import ScoopExecutor

Page = tuple[str, str, list[str]]  # address, digest of the text, addresses it links to


def fetch(site: int, path: int, pages: int, cost: float) -> Page:
    """Make page ``path`` of ``site`` and parse it: its digest and its links (CPU work, ``cost`` s)."""
    rng = random.Random(f"{site}/{path}")
    words = [rng.choice("lorem ipsum dolor sit amet consectetur adipiscing elit".split()) for _ in range(200)]
    links = sorted({rng.randrange(pages) for _ in range(rng.randrange(1, 5))})
    text = " ".join(words) + "".join(f' <a href="/{site}/{n}">' for n in links)
    digest = hashlib.sha256(text.encode()).hexdigest()
    end = time.perf_counter() + cost  # the rest of a real page's cost
    work = digest.encode()
    while time.perf_counter() < end:
        work = hashlib.sha256(work).digest()
    found = [part.split('"')[0] for part in text.split('<a href="')[1:]]
    return f"/{site}/{path}", digest[:16], found


async def crawl(site: int, pages: int, cost: float, concurrency: int,
                run: Callable[..., Awaitable[Page]]) -> dict[str, Page]:
    """Read every page reachable from the site's front page, ``concurrency`` at a time."""
    seen = {f"/{site}/0"}
    done: dict[str, Page] = {}
    gate = asyncio.Semaphore(concurrency)

    async def visit(address: str) -> None:
        async with gate:
            page = await run(fetch, site, int(address.rsplit("/", 1)[1]), pages, cost)
        done[address] = page
        fresh = [a for a in page[2] if a not in seen]
        seen.update(fresh)
        await asyncio.gather(*(visit(a) for a in fresh))

    await visit(f"/{site}/0")
    return dict(sorted(done.items()))


def crawl_site(site: int, pages: int, cost: float, concurrency: int) -> dict[str, Page]:
    """A task: crawl one site with an event loop of its own, its fetches as sub-tasks of the pool."""

    async def main() -> dict[str, Page]:
        loop = asyncio.get_running_loop()
        pool = scoopexec.current_executor()  # in a task: the pool the task runs in

        def run(fn: Callable[..., Page], *args: object) -> Awaitable[Page]:
            return loop.run_in_executor(pool, fn, *args)

        return await crawl(site, pages, cost, concurrency, run)

    return asyncio.run(main())


def rank(sites: list[dict[str, Page]]) -> list[tuple[str, int]]:
    """Pages by how many pages link to them (most first), then by address."""
    counts: dict[str, int] = {}
    for pages in sites:
        for _, _, links in pages.values():
            for a in links:
                counts[a] = counts.get(a, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]


async def crawl_all(ex: ScoopExecutor, args: argparse.Namespace) -> tuple[list[dict[str, Page]], list]:
    reports: dict[int, dict[str, Page]] = {}
    n = args.sites
    settings = ([args.pages] * n, [args.cost] * n, [args.concurrency] * n)
    async for pages in ex.amap(crawl_site, range(n), *settings):
        site = int(next(iter(pages)).split("/")[1])
        reports[site] = pages
        print(f"site {site}: {len(pages)} pages crawled")
    sites = [reports[s] for s in range(n)]
    top = await asyncio.wrap_future(ex.submit(rank, sites))
    return sites, top


async def crawl_serially(args: argparse.Namespace) -> tuple[list[dict[str, Page]], list]:
    async def run(fn: Callable[..., Page], *a: object) -> Page:
        return fn(*a)

    sites = [await crawl(s, args.pages, args.cost, args.concurrency, run) for s in range(args.sites)]
    return sites, rank(sites)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--pages", type=int, default=300, help="pages per site")
    ap.add_argument("--cost", type=float, default=0.002, help="CPU seconds to fetch and parse a page")
    ap.add_argument("--concurrency", type=int, default=16, help="fetches in flight per site")
    args = ap.parse_args()

    t0 = time.perf_counter()
    with ScoopExecutor(max_workers=args.workers) as ex:
        sites, top = asyncio.run(crawl_all(ex, args))
        workers = len(ex.worker_pids)
    parallel_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    serial_sites, serial_top = asyncio.run(crawl_serially(args))
    serial_s = time.perf_counter() - t0

    print(f"{sum(len(s) for s in sites)} pages on {len(sites)} sites; most linked: {top[:3]}")
    print(f"on {workers} workers: {parallel_s:.2f} s (pool start included); serial: {serial_s:.2f} s")
    same = sites == serial_sites and top == serial_top
    print(f"same answer as the serial run: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
