"""What the engine spends around the model: sentiment and NER on real reviews with a model that costs
nothing. The engines load a random one-layer DistilBERT (bench/random_models.py "tiny") for its
tokenizer and labels; its forward is then replaced by a lookup of random logits per token id (with a
bias on "O" so that the tagger finds about as many entities a review as the bundled model).

On a GPU the forward of a DistilBERT-base is cheap next to the Python that feeds it (bench/RESULTS.md,
"GPU"); this measures that Python on any host: the rate here is the ceiling of one engine process
however fast the device. --profile prints where the time goes (cProfile, cumulative).

    python bench/host_overhead.py --reviews 2048 --per-call 512
    python bench/host_overhead.py --reviews 2048 --per-call 512 --profile sentiment
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.bench_inference import median_time  # noqa: E402
from bench.common import chunks, machine, model_dirs, now, real_reviews  # noqa: E402


def lookup_forward(engine, per_token: bool, o_bias: float = 3.3):
    """A forward that costs nothing: logits[row, token] = table[token id]; sequence heads read [CLS]'s."""
    generator = torch.Generator().manual_seed(0)
    names = getattr(engine, "labels", None) or engine.tags
    table = torch.randn(engine.model.config.vocab_size, len(names), generator=generator)
    if "O" in names:
        table[:, names.index("O")] += o_bias

    def forward(input_ids, attention_mask):
        logits = table[input_ids.cpu() % table.shape[0]]  # casing.py "added" ids sit past the vocabulary
        return logits if per_token else logits[:, 0]

    return forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=2048)
    ap.add_argument("--per-call", type=int, default=512, help="reviews per predict() call")
    ap.add_argument("--budget", type=int, default=65536, help="token budget (a GPU's, by default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", choices=["sentiment", "ner", "both"])
    ap.add_argument("--model-size", choices=["tiny", "bundled"], default="tiny",
                    help="whose tokenizer and labels (the bundled NER model marks case: casing.py)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from worker.nlp.ner import load_ner, predict_both
    from worker.nlp.sentiment import load_sentiment

    dirs = model_dirs(args.model_size)
    texts = [r["text"] for r in real_reviews(args.reviews)]
    s = load_sentiment(dirs["sentiment"], device="cpu", precision="fp32", token_budget=args.budget)
    n = load_ner(dirs["ner"], device="cpu", precision="fp32", token_budget=args.budget)
    for engine in (s, n):
        engine.forward._forward = lookup_forward(engine, per_token=engine is n)
    s.predict(texts[:64]), n.predict(texts[:64])

    def sentiment():
        for c in chunks(texts, args.per_call):
            s.predict(c)

    def ner():
        for c in chunks(texts, args.per_call):
            n.predict(c)

    def both():  # as a worker runs them: one tokenization for both where the tokenizers agree
        for c in chunks(texts, args.per_call):
            predict_both(s, n, c)

    runs = {"sentiment": sentiment, "ner": ner, "both": both}
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(runs[args.profile])
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
        return
    print(f"# {machine()}; {now()}")
    print(f"# {args.reviews} IMDb reviews, {args.per_call} per call, token budget {args.budget}, "
          f"a model that costs nothing, median of {args.rounds}")
    for name, fn in runs.items():
        seconds = median_time(fn, args.rounds)
        print(f"{name}: {args.reviews / seconds:.0f} reviews/s ({seconds * 1e6 / args.reviews:.0f} us a review)")


if __name__ == "__main__":
    main()
