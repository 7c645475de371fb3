"""Speed and agreement with float32 of each precision, on the real bundled models.

    python bench/precision_agreement.py [N_REVIEWS]      # default 512 unlabeled IMDb reviews

Every precision runs the engine as a worker does (predict on chunks of 64 reviews); agreement is
with the same model in float32: sentiment labels, and NER entity spans exact (label, start, end),
as (share of the fp32 entities found, share of the found entities that fp32 has). Then the verdicts
of precision auto's agreement check (synthetic token ids) on the same models, which should match.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BUNDLED, chunks, entity_agreement, label_agreement, machine, now, real_reviews  # noqa: E402
from worker.nlp import loading  # noqa: E402
from worker.nlp import precision as auto  # noqa: E402
from worker.nlp.cpu import cpu_float_precision  # noqa: E402
from worker.nlp.ner import load_ner  # noqa: E402
from worker.nlp.sentiment import load_sentiment  # noqa: E402


def main() -> None:
    warnings.filterwarnings("ignore")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    texts = [r["text"] for r in real_reviews(n)]
    print(f"# {n} IMDb reviews, bundled models; {machine()}; {now()}")
    for task, loader in (("sentiment", load_sentiment), ("ner", load_ner)):
        out = {}
        for precision in ("fp32", "bf16", "int8"):
            engine = loader(str(BUNDLED / task), device="cpu", precision=precision)
            engine.predict(texts[:8])
            started = time.perf_counter()
            out[precision] = [o for c in chunks(texts, 64) for o in engine.predict(c)]
            rate = n / (time.perf_counter() - started)
            if precision == "fp32":
                print(f"{task:9} {precision}: {rate:6.1f} reviews/s")
            elif task == "sentiment":
                agree = label_agreement(out[precision], out["fp32"])
                print(f"{task:9} {precision}: {rate:6.1f} reviews/s, labels agree with fp32: {100 * agree:.2f}%")
            else:
                found, kept = entity_agreement(out[precision], out["fp32"])
                print(f"{task:9} {precision}: {rate:6.1f} reviews/s, fp32 entities found: {100 * found:.2f}%, "
                      f"found entities in fp32: {100 * kept:.2f}%")
        # What precision auto's check (worker/nlp/precision.py, on synthetic ids) says of the same model.
        model, tokenizer, dev, _ = loading.load(str(BUNDLED / task), task, "cpu", "fp32")
        trials = auto.measure(model, tokenizer, dev, task, ["fp32", "bf16", "int8"])
        print(f"{task:9} auto's check on synthetic ids: " + ", ".join(
            f"{t.precision} {100 * t.agreement:.2f}% {'kept' if t.passed else 'rejected'}" for t in trials[1:])
            + f"; pick here: {auto.fastest(trials, default=cpu_float_precision())}")


if __name__ == "__main__":
    main()
