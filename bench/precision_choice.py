"""What REVIEWS_PRECISION=auto costs and picks on this machine: the measurement of worker/nlp/precision.py
run afresh several times per model (no cache), and a load that reads the cache.

    python bench/precision_choice.py                         # bundled models and random DistilBERT-base
    python bench/precision_choice.py --sizes bundled --repeats 5

Per model and task: the wall time of each measurement (copies, warm-up, timed batches, agreement),
each precision's time on the timed batches and its agreement with fp32, the pick each time (a pick
that changes between repeats means the candidates are within the noise of the machine), the share of
the CPUs that other processes used meanwhile ("others": over 25%, a worker would not cache it), and the time
of a load that finds the choice in the cache against a load at a fixed precision. The one-time
build or load of the int8 kernels (int8.available(), once per process, also paid by any int8 model)
is timed apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, model_dirs, now  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="bundled,base", help="comma-separated: bundled, small, base")
    ap.add_argument("--tasks", default="sentiment,ner")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each measurement, wait up to this long for other processes to leave the CPUs "
                         "(under a quarter of them busy over 3 s)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    os.environ["REVIEWS_HOME"] = tempfile.mkdtemp(prefix="reviews-precision-")

    from worker.nlp import int8, loading, precision
    from worker.nlp.cpu import cpu_float_precision

    print(f"# precision auto, measured afresh {args.repeats} times per model; {machine()}; {now()}")
    started = time.perf_counter()
    available = int8.available()
    print(f"# int8 kernels {'loaded' if available else 'unavailable'} in {time.perf_counter() - started:.1f} s "
          f"(once per process); candidates: sentiment {precision.candidates('sentiment')}, "
          f"NER {precision.candidates('ner')}")
    print(f"{'model':9} {'task':9} {'measure s':>9}  {'per precision: ms on the timed batches, agreement':58} "
          f"pick  others")
    for size in args.sizes.split(","):
        dirs = model_dirs(size)
        for task in args.tasks.split(","):
            model, tokenizer, dev, _ = loading.load(dirs[task], task, "cpu", "fp32")
            picks = Counter()
            for _ in range(args.repeats):
                if args.wait_quiet:
                    _wait_quiet(args.wait_quiet)
                started = time.perf_counter()
                with precision.others_busy() as busy:
                    trials = precision.measure(model, tokenizer, dev, task, precision.candidates(task))
                cost = time.perf_counter() - started
                quiet = busy.share is None or busy.share <= precision.MAX_OTHERS_BUSY
                pick = precision.fastest(trials, default=cpu_float_precision(), timings_usable=quiet)
                picks[pick] += 1
                detail = ", ".join(f"{t.precision} {1000 * t.seconds:5.0f} {100 * t.agreement:5.1f}%"
                                   + ("" if t.passed else " x") for t in trials)
                others = "?" if busy.share is None else f"{100 * busy.share:.0f}%"
                print(f"{size:9} {task:9} {cost:9.2f}  {detail:58} {pick:5} {others:>6}", flush=True)
            # A load that measures and writes the cache, then loads that read it, against a fixed precision.
            path = dirs[task]
            loading.load(path, task, "cpu", "auto")
            t_cached = _best(lambda p=path, t=task: loading.load(p, t, "cpu", "auto"))
            t_fixed = _best(lambda p=path, t=task: loading.load(p, t, "cpu", "fp32"))
            print(f"{size:9} {task:9} picks {dict(picks)}; load with the cache {t_cached:.2f} s, "
                  f"at a fixed precision {t_fixed:.2f} s")


def _wait_quiet(limit: float) -> None:
    from worker.nlp import precision

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with precision.others_busy() as busy:
            time.sleep(3)
        if busy.share is None or busy.share < precision.MAX_OTHERS_BUSY:
            return
    print(f"# (still busy after {limit:.0f} s: measuring anyway)", flush=True)


def _best(fn, n: int = 2) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


if __name__ == "__main__":
    main()
