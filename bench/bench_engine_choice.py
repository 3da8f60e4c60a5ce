"""What ``--engine auto`` costs a run on the CPU (issue 15's cause 3): the first decision for a
model, shape and machine probes every CPU engine (an ONNX export and timed runs); every later run
reads the decision from the engine cache. Both measured here, in one process, with a fresh cache.

    python bench/bench_engine_choice.py [--model xresnet18] [--sizes 64,224]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="xresnet18")
    ap.add_argument("--sizes", default="64,224")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GALSPEC_ENGINE_CACHE"] = cache
        from galspec_batch.engines.auto import choose_engine
        from galspec_batch.models import create_model

        net = create_model(a.model, in_bands=5, n_out=6).eval()
        print(f"{'size':>5} {'probe (first run) s':>20} {'cached (later runs) s':>22} {'ratio':>9}  choice")
        for size in map(int, a.sizes.split(",")):
            t0 = time.perf_counter()
            first = choose_engine(net, input_shape=(5, size, size), cache_key=f"bench-{a.model}")
            probe = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = [choose_engine(net, input_shape=(5, size, size), cache_key=f"bench-{a.model}")
                     for _ in range(10)]
            cached = (time.perf_counter() - t0) / 10
            assert set(again) == {first}  # the same choice every later run
            print(f"{size:5d} {probe:20.2f} {cached:22.5f} {probe / cached:8.0f}x  {first}")


if __name__ == "__main__":
    main()
