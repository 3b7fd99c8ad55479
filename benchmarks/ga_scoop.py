"""The GA of ga.py on SCOOP 0.7.2, which needs its own launcher.

ga.py starts it as ``python -m scoop -q -n 2 ga_scoop.py SIZES_JSON OUT_JSON``;
DEAP users on SCOOP register ``futures.map`` as the toolbox's map.
"""

from __future__ import annotations

import json
import os
import sys

from scoop import futures

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.ga import noop, run_all_costs  # noqa: E402


def main() -> None:
    size = json.loads(sys.argv[1])
    list(futures.map(noop, range(16)))
    res = run_all_costs(futures.map, size)
    with open(sys.argv[2], "w") as fh:
        json.dump(res, fh)


if __name__ == "__main__":
    main()
