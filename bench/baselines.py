"""Other runtimes against the engine, on the same reviews, model and batches: transformers' pipeline,
ONNX Runtime (fused graph, fp32 and dynamic int8 per channel) and OpenVINO (f32, and bf16 where the
CPU has it), next to the engine at bf16, int8 and auto.

    python bench/baselines.py --reviews 128 --rounds 1                  # random DistilBERT-base sentiment
    python bench/bench_inference.py --baselines-only --reviews 128      # the same, from the main benchmark
    python bench/baselines.py --task ner --model-size bundled

ONNX Runtime and OpenVINO are optional bench dependencies, not the service's:

    pip install onnxruntime openvino onnx onnxscript

A runtime that is not installed (or fails to export, optimize or compile here) is skipped with the
reason printed in its row; the rest of the table still runs.

How each runs:
- pipeline: transformers.pipeline, float32, batch_size 1, truncation to 512 tokens (it reads only the
  first 512 tokens of a review: its agreement is lower for that reason alone).
- ONNX Runtime and OpenVINO run inside the engine: the same windows (512 tokens, stride 128), the
  same length-sorted batches of 2048 padded tokens, the same mean of window logits; only the model's
  forward is theirs. The model is exported once with torch.onnx (TorchScript exporter, eager
  attention, dynamic batch and length).
  ONNX Runtime: `onnxruntime.transformers.optimizer.optimize_model(model_type="bert")` fuses the
  graph (embedding + LayerNorm, attention, bias + GELU, skip + LayerNorm); int8 is
  `onnxruntime.quantization.quantize_dynamic(per_channel=True, weight_type=QInt8)` of the fused graph.
  OpenVINO: the exported ONNX model compiled for "CPU" with INFERENCE_PRECISION_HINT f32 or bf16
  (bf16 only where the CPU reports BF16), PERFORMANCE_HINT LATENCY.
- engine: worker.nlp.load_sentiment / load_ner at bf16, int8 and auto. auto measures on load (a fresh
  REVIEWS_HOME, so the measurement runs and its cost is shown; a worker pays it once per machine).
Every runtime uses torch's thread count (one thread per core by default). Rounds are interleaved
chunk by chunk: every row runs each chunk of --batch-size reviews in turn, in a rotating order, so a
noisy shared machine slows all alike.
Agreement: with the same model in float32 through transformers' forward and the engine's windows
(sentiment: labels; NER: entity spans exact, the lower of recall and precision).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    CACHE, chunks, entity_agreement, label_agreement, machine, model_dirs, now, real_reviews,
)
from worker.nlp.cpu import cpu_has_fast_bf16  # noqa: E402

INSTALL = "pip install onnxruntime openvino onnx onnxscript"
SETTLE_S = 0.2  # before each timed call (see runtime_table)


class Skipped(Exception):
    """A row that cannot run here; its message says why."""


class RuntimeForward:
    """A batching.Forward look-alike around another runtime's run(ids, mask) -> numpy logits."""

    def __init__(self, run):
        import torch

        self.run, self.device, self.fast, self.precision = run, torch.device("cpu"), False, "other"

    def context(self):
        return contextlib.nullcontext()

    def __call__(self, input_ids, attention_mask, full=None):  # full: the engine's hint, unused here
        import torch

        return torch.from_numpy(self.run(input_ids.numpy(), attention_mask.numpy())).float()


def with_forward(engine, forward):
    """The engine with another forward: same tokenizer, windows, batches and window rule."""
    other = copy.copy(engine)
    other.forward = forward
    return other


# -- export -----------------------------------------------------------------------------------------


def export_onnx(model_dir: str, task: str, out_dir: Path) -> Path:
    """The float32 model as ONNX (input_ids, attention_mask -> logits), dynamic batch and length;
    exported once per model directory (into out_dir, under the bench models' cache)."""
    import torch
    import transformers

    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
    except ImportError as exc:
        raise Skipped(f"onnx not installed ({INSTALL})") from exc
    path = out_dir / "model.onnx"
    weights = Path(model_dir) / "model.safetensors"
    if path.is_file() and path.stat().st_mtime >= weights.stat().st_mtime:
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    head = "AutoModelForSequenceClassification" if task == "sentiment" else "AutoModelForTokenClassification"
    # Eager attention: the pattern ONNX Runtime's fusions recognise (SDPA exports as other ops).
    model = getattr(transformers, head).from_pretrained(model_dir, dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    ids = torch.randint(1000, 2000, (2, 16))
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
            "logits": {0: "batch"} if task == "sentiment" else {0: "batch", 1: "length"}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"], dynamic_axes=axes)
    return path


# -- ONNX Runtime -----------------------------------------------------------------------------------


def ort_fused(onnx_path: Path, config, quantize: bool) -> tuple[Path, str]:
    """The graph fused by onnxruntime.transformers' optimizer (and, with quantize, dynamic int8 per
    channel); returns the file and a note of what was fused."""
    try:
        from onnxruntime.transformers import optimizer
    except ImportError as exc:
        raise Skipped(f"onnxruntime not installed ({INSTALL})") from exc
    fused = onnx_path.with_name("model_fused.onnx")
    stats_file = onnx_path.with_name("model_fused.json")
    if not fused.is_file() or fused.stat().st_mtime < onnx_path.stat().st_mtime:
        hidden = getattr(config, "dim", None) or config.hidden_size
        heads = getattr(config, "n_heads", None) or config.num_attention_heads
        opt = optimizer.optimize_model(str(onnx_path), model_type="bert", num_heads=heads, hidden_size=hidden)
        stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(fused))
        stats_file.write_text(json.dumps(stats))
    stats = json.loads(stats_file.read_text())
    note = "fused: " + ", ".join(f"{v} {k}" for k, v in stats.items())
    if not quantize:
        return fused, note
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = onnx_path.with_name("model_fused_int8.onnx")
    if not quantized.is_file() or quantized.stat().st_mtime < fused.stat().st_mtime:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The fused graph's com.microsoft ops defeat ONNX shape inference: say what the untyped
            # tensors hold (float32) rather than quantize before fusing (the int8 graph then fuses less).
            quantize_dynamic(str(fused), str(quantized), per_channel=True, weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return quantized, note


def ort_forward(path: Path, threads: int) -> RuntimeForward:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def run(ids, mask):
        feed = {"input_ids": ids, "attention_mask": mask}
        return session.run(None, {k: v for k, v in feed.items() if k in names})[0]

    return RuntimeForward(run)


# -- OpenVINO ---------------------------------------------------------------------------------------


def openvino_bf16() -> bool:
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_forward(onnx_path: Path, hint: str, threads: int) -> tuple[RuntimeForward, str]:
    try:
        import openvino as ov
    except ImportError as exc:
        raise Skipped(f"openvino not installed ({INSTALL})") from exc
    core = ov.Core()
    if hint == "bf16" and not openvino_bf16():
        raise Skipped("the CPU reports no BF16 to OpenVINO")
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {
        "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    runs = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    request = compiled.create_infer_request()

    def run(ids, mask):
        return request.infer({"input_ids": ids, "attention_mask": mask})[0].copy()

    return RuntimeForward(run), f"inference precision {runs}"


# -- the table --------------------------------------------------------------------------------------


def runtime_table(dirs: dict[str, str], task: str, texts: list[str], warm: list[str], batch_size: int,
                  rounds: int, n_tokens: int) -> str:
    """Build every row, time them in interleaved rounds, and return the table as text."""
    import torch
    from transformers.utils import logging as hf_logging

    from worker.nlp import batching, loading
    from worker.nlp.ner import load_ner
    from worker.nlp.sentiment import load_sentiment

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    threads = torch.get_num_threads()
    loader = load_sentiment if task == "sentiment" else load_ner
    path = dirs[task]
    # Exported files live with the bench models, never beside a model in the repository.
    tag = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:8]
    onnx_dir = CACHE / "onnx" / f"{Path(path).parent.name}-{Path(path).name}-{tag}"
    rows: list[dict] = []  # name, note, predict (texts -> outputs), setup_s, or skipped

    def add(name: str, build, note: str = "") -> None:
        started = time.perf_counter()
        try:
            predict, extra = build()
        except Skipped as exc:
            rows.append({"name": name, "skipped": str(exc)})
            print(f"  skipped: {name}: {exc}", file=sys.stderr, flush=True)
            return
        except Exception as exc:  # a runtime that fails here is reported, not fatal
            rows.append({"name": name, "skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"})
            print(f"  failed: {name}: {exc}", file=sys.stderr, flush=True)
            return
        predict(warm)  # warm-up (and, for the engine's int8, compilation)
        setup = time.perf_counter() - started
        rows.append({"name": name, "note": " ".join(x for x in (note, extra) if x), "predict": predict,
                     "setup_s": setup, "times": [], "out": None})
        print(f"  ready: {name} ({setup:.1f} s)", file=sys.stderr, flush=True)

    def engine_predict(engine):
        return lambda xs: [o for c in chunks(xs, batch_size) for o in engine.predict(c)]

    # The float32 reference: transformers' forward inside the engine's windows.
    reference = loader(path, device="cpu", precision="fp32")
    ref_model, _, dev, _ = loading.load(path, task, "cpu", "fp32", use_transformers=True)
    reference = with_forward(reference, batching.Forward(ref_model, dev, "fp32", task == "ner", use_fast=False))
    ref_out = engine_predict(reference)(texts)
    base = loader(path, device="cpu", precision="fp32")  # tokenizer, windows and labels for the runtimes

    def pipeline_row():
        from transformers import pipeline

        if task == "sentiment":
            clf = pipeline("text-classification", model=path, device=-1, dtype=torch.float32)
            labels = [base.model.config.id2label[i] for i in range(base.model.config.num_labels)]

            def predict(xs):
                from worker.nlp.types import Sentiment

                out = clf(xs, batch_size=1, truncation=True, max_length=512)
                return [Sentiment(label=base.labels[labels.index(o["label"])], probability=o["score"], score=0.0)
                        for o in out]
            return predict, ""
        ner = pipeline("token-classification", model=path, device=-1, dtype=torch.float32,
                       aggregation_strategy="simple", stride=128)

        def predict_ner(xs):
            from worker.nlp.types import Entity

            return [[Entity(e["entity_group"], e["word"], e["start"], e["end"], float(e["score"])) for e in es]
                    for es in ner(xs, batch_size=1)]
        return predict_ner, ""

    def ort_row(quantize: bool):
        def build():
            onnx_path = export_onnx(path, task, onnx_dir)
            model_path, note = ort_fused(onnx_path, base.model.config, quantize)
            return engine_predict(with_forward(base, ort_forward(model_path, threads))), note
        return build

    def openvino_row(hint: str):
        def build():
            onnx_path = export_onnx(path, task, onnx_dir)
            forward, note = openvino_forward(onnx_path, hint, threads)
            return engine_predict(with_forward(base, forward)), note
        return build

    def engine_row(precision: str):
        def build():
            if precision == "bf16" and not cpu_has_fast_bf16():
                # Emulated bf16 ran at 0.17x fp32 on an AVX2-only EPYC: minutes of a run for a row
                # that auto never picks there.
                raise Skipped("the CPU has no fast bf16 (AVX-512 BF16 or AMX); auto does not offer it")
            if precision != "auto":
                return engine_predict(loader(path, device="cpu", precision=precision)), ""
            from worker.nlp import precision as auto

            home = tempfile.mkdtemp(prefix="reviews-bench-home-")
            old_home, real_measure, seen = os.environ.get("REVIEWS_HOME"), auto.measure, {}

            def recording(*args, **kwargs):
                started = time.perf_counter()
                seen["trials"] = real_measure(*args, **kwargs)
                seen["seconds"] = time.perf_counter() - started
                return seen["trials"]

            os.environ["REVIEWS_HOME"], auto.measure = home, recording
            try:
                engine = loader(path, device="cpu", precision="auto")
            finally:
                auto.measure = real_measure
                if old_home is None:
                    os.environ.pop("REVIEWS_HOME", None)
                else:
                    os.environ["REVIEWS_HOME"] = old_home
            tried = ", ".join(f"{t.precision} {1000 * t.seconds:.0f} ms" + ("" if t.passed else " (rejected)")
                              for t in seen["trials"])
            cached = (Path(home) / "cache" / "precision.json").is_file()
            busy = "" if cached else " (machine busy: the flags' choice, not cached)"
            return engine_predict(engine), f"-> {engine.precision}{busy}; measured in {seen['seconds']:.1f} s: {tried}"
        return build

    pipe_name = ("pipeline text-classification, batch_size=1" if task == "sentiment"
                 else "pipeline token-classification, batch_size=1")
    # The engine first: auto measures at load. Built after ONNX Runtime and OpenVINO, its measurement
    # timed int8 at 1.5x bf16's time (380 against 254 ms) where, alone in a process, int8 took 0.87x
    # (230 against 263 ms), as on real reviews; their thread pools are the likely cause.
    add("engine auto", engine_row("auto"))
    add("engine bf16", engine_row("bf16"))
    add("engine int8", engine_row("int8"))
    add(pipe_name, pipeline_row, "fp32, truncates at 512 tokens" if task == "sentiment" else "fp32, stride 128")
    add("ONNX Runtime fp32, fused graph", ort_row(False), "engine's windows and batches;")
    add("ONNX Runtime int8 (dynamic, per channel), fused graph", ort_row(True), "engine's windows and batches;")
    add("OpenVINO f32", openvino_row("f32"), "engine's windows and batches;")
    add("OpenVINO bf16", openvino_row("bf16"), "engine's windows and batches;")

    # Interleaved chunk by chunk, in an order that rotates: on a shared host the speed drifts by up to
    # 2x over minutes, and whole passes one row after another gave two identical engines 1.26x apart.
    live = [r for r in rows if "predict" in r]
    for k in range(rounds):
        spent, outs = {id(r): 0.0 for r in live}, {id(r): [] for r in live}
        for c, chunk in enumerate(chunks(texts, batch_size)):
            shift = (k + c) % len(live)
            for r in live[shift:] + live[:shift]:
                # ONNX Runtime's and OpenVINO's worker threads spin for a while after a call: the row
                # after them ran 1.2x slower than the same engine elsewhere in the order (two engines
                # at bf16: 18.8 against 22.6 reviews/s). A pause, not timed, lets them go idle.
                time.sleep(SETTLE_S)
                started = time.perf_counter()
                outs[id(r)].extend(r["predict"](chunk))
                spent[id(r)] += time.perf_counter() - started
        for r in live:
            r["out"] = outs[id(r)]
            r["times"].append(spent[id(r)])
            print(f"  round {k + 1}: {r['name']}: {len(texts) / spent[id(r)]:.2f} reviews/s", file=sys.stderr, flush=True)

    def rate(r) -> float:
        return len(texts) / statistics.median(r["times"])

    pipe = next((r for r in live if r["name"] == pipe_name), None)
    auto = next((r for r in live if r["name"] == "engine auto"), None)
    agree_head = "labels" if task == "sentiment" else "spans"
    out = [f"| {'what':<54} | reviews/s | tokens/s | vs pipeline | vs auto | {agree_head} = fp32 | setup s | note |",
           f"|{'-' * 56}|----------:|---------:|------------:|--------:|-------------:|--------:|------|"]
    for r in rows:
        if "predict" not in r:
            out.append(f"| {r['name']:<54} | {'-':>9} | {'-':>8} | {'':>11} | {'':>7} | {'':>12} | {'':>7} | "
                       f"skipped: {r['skipped']} |")
            continue
        if task == "sentiment":
            agree = label_agreement(r["out"], ref_out)
        else:
            agree = min(entity_agreement(r["out"], ref_out))
        vs_pipe = f"{rate(r) / rate(pipe):.2f}x" if pipe else ""
        vs_auto = f"{rate(r) / rate(auto):.2f}x" if auto else ""
        out.append(f"| {r['name']:<54} | {rate(r):9.2f} | {n_tokens * rate(r) / len(texts):8.0f} | {vs_pipe:>11} | "
                   f"{vs_auto:>7} | {100 * agree:11.2f}% | {r['setup_s']:7.1f} | {r['note']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=128)
    ap.add_argument("--task", choices=["sentiment", "ner"], default="sentiment")
    ap.add_argument("--model-size", choices=["base", "small", "bundled"], default="base")
    ap.add_argument("--batch-size", type=int, default=64, help="reviews per predict call (a queue message)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    print(baselines_report(args.model_size, args.task, args.reviews, args.batch_size, args.rounds))


def baselines_report(model_size: str, task: str, n_reviews: int, batch_size: int, rounds: int) -> str:
    from transformers import AutoTokenizer

    started = time.time()
    dirs = model_dirs(model_size)
    texts = [r["text"] for r in real_reviews(n_reviews)]
    warm = [r["text"] for r in real_reviews(16, skip=n_reviews)]
    tok = AutoTokenizer.from_pretrained(dirs[task])
    n_tokens = sum(len(ids) for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"])
    versions = []
    for name in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} not installed")
    table = runtime_table(dirs, task, texts, warm, batch_size, rounds, n_tokens)
    return "\n".join([
        f"# runtimes, {task}, {model_size} model ({dirs[task]}), {len(texts)} real IMDb reviews, {n_tokens} tokens, "
        f"predict in chunks of {batch_size}, median of {rounds} interleaved round(s)",
        f"# {machine()}; {', '.join(versions)}; {now()}; took {(time.time() - started) / 60:.1f} min",
        "",
        table,
    ])


if __name__ == "__main__":
    main()
