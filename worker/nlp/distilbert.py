"""A saved DistilBERT classifier and its tokenizer, loaded for inference without transformers.

Importing transformers and building a model through `from_pretrained` cost a worker 3.5 of its 6.1
seconds of start-up on the 2-core AVX2 host (bench/RESULTS.md, "Start-up"); the weights themselves
load in 10 ms. The engine's forward (fast.py) reads only the modules and config fields below, so for
the directories we write (and any DistilBERT saved by transformers, one safetensors file, a
tokenizer.json) this module builds those modules, loads the file into them, and wraps the tokenizer
from the `tokenizers` library directly. Parameter names are transformers' own, so the same file
loads either way, and tests check that both give the same ids, offsets and logits.

Anything else (other architectures, sharded weights, hub ids) goes through transformers (loading.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from torch import nn

HEADS = {"sentiment": "DistilBertForSequenceClassification", "ner": "DistilBertForTokenClassification"}
WEIGHTS = "model.safetensors"


@dataclass
class Config:
    """The fields of config.json that inference reads; names as transformers' DistilBertConfig."""

    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    vocab_size: int
    max_position_embeddings: int
    id2label: dict[int, str]
    label2id: dict[str, int]
    activation: str = "gelu"
    case_markers: dict | None = None
    model_type: str = "distilbert"
    architectures: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


def can_load(directory: Path, task: str) -> bool:
    """Whether `directory` holds what this module reads: a DistilBERT with the task's head, in one
    safetensors file, with a tokenizer.json."""
    try:
        raw = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (raw.get("model_type") == "distilbert" and HEADS[task] in (raw.get("architectures") or [])
            and raw.get("activation", "gelu") == "gelu" and not raw.get("sinusoidal_pos_embds", False)
            and (directory / WEIGHTS).is_file() and (directory / "tokenizer.json").is_file())


def read_config(directory: Path) -> Config:
    raw = json.loads((directory / "config.json").read_text())
    id2label = {int(k): str(v) for k, v in (raw.get("id2label") or {}).items()}
    if not id2label:  # as transformers reads a config without labels
        id2label = {i: f"LABEL_{i}" for i in range(int(raw.get("num_labels", 2)))}
    given = {f.name: raw[f.name] for f in fields(Config) if f.name in raw and f.name not in ("id2label", "label2id")}
    label2id = {str(k): int(v) for k, v in (raw.get("label2id") or {}).items()} or {v: k for k, v in id2label.items()}
    return Config(**given, id2label=id2label, label2id=label2id)


# -- the modules: the layout (and parameter names) of transformers' DistilBERT -------------------------


class Linear(nn.Linear):
    def reset_parameters(self) -> None:
        """Nothing: every weight comes from the file, and random initialisation took 0.2 s a model."""


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        """Nothing, as for Linear."""


class Embeddings(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.word_embeddings = Embedding(c.vocab_size, c.dim)
        self.position_embeddings = Embedding(c.max_position_embeddings, c.dim)
        self.LayerNorm = nn.LayerNorm(c.dim, eps=1e-12)


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.q_lin, self.k_lin = Linear(c.dim, c.dim), Linear(c.dim, c.dim)
        self.v_lin, self.out_lin = Linear(c.dim, c.dim), Linear(c.dim, c.dim)


class FeedForward(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.lin1, self.lin2 = Linear(c.dim, c.hidden_dim), Linear(c.hidden_dim, c.dim)
        self.activation = nn.GELU()


class Layer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.attention = Attention(c)
        self.sa_layer_norm = nn.LayerNorm(c.dim, eps=1e-12)
        self.ffn = FeedForward(c)
        self.output_layer_norm = nn.LayerNorm(c.dim, eps=1e-12)


class Transformer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.n_layers))


class Encoder(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.embeddings = Embeddings(c)
        self.transformer = Transformer(c)


class Classifier(nn.Module):
    """DistilBERT with a sequence head (pre_classifier, classifier on [CLS]) or a token head
    (classifier on every position). The forward is the engine's (fast.DistilBertForward)."""

    def __init__(self, c: Config, per_token: bool):
        super().__init__()
        self.config, self.per_token = c, per_token
        self.distilbert = Encoder(c)
        if not per_token:
            self.pre_classifier = Linear(c.dim, c.dim)
        self.classifier = Linear(c.dim, c.num_labels)


def load_model(directory: Path, task: str) -> Classifier:
    """The classifier in `directory`, float32 on the CPU. Raises ValueError when the file's tensors
    are not the ones the config describes."""
    from safetensors.torch import load_file

    config = read_config(directory)
    model = Classifier(config, per_token=task == "ner")
    state = {k: v.float() for k, v in load_file(str(directory / WEIGHTS)).items()}
    state.pop("distilbert.embeddings.position_ids", None)  # a buffer some transformers versions saved
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        raise ValueError(f"{WEIGHTS} does not match config.json: missing {missing[:3]}, unexpected {extra[:3]}, "
                         f"wrong shape {[(k, found[k], expected[k]) for k in wrong[:3]]}")
    model.load_state_dict(state, assign=True)
    return model.eval()


# -- the tokenizer -----------------------------------------------------------------------------------


class Tokenizer:
    """The part of a transformers fast tokenizer the engine uses, over the `tokenizers` library."""

    is_fast = True

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer as Backend

        self.backend = Backend.from_file(str(directory / "tokenizer.json"))
        self.backend.no_truncation()  # windows decide what the model sees (batching.py)
        self.backend.no_padding()
        settings = _special_tokens(directory)
        ids = {name: self.backend.token_to_id(token) for name, token in settings.items()}
        self.unk_token_id = ids.get("unk_token")
        self.cls_token_id, self.sep_token_id = ids.get("cls_token"), ids.get("sep_token")
        self.pad_token_id = ids.get("pad_token")
        if None in (self.unk_token_id, self.cls_token_id, self.sep_token_id):
            raise ValueError(f"tokenizer.json lacks a special token: {settings}")
        self.all_special_ids = sorted({i for i in ids.values() if i is not None})

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: list[str], add_special_tokens: bool = True, return_offsets_mapping: bool = False,
                 **_ignored) -> dict[str, list]:
        encodings = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        out: dict[str, list] = {"input_ids": [e.ids for e in encodings]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encodings]
        return out

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        found = [self.backend.token_to_id(t) for t in tokens]
        return [self.unk_token_id if i is None else i for i in found]

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self.backend.id_to_token(i) for i in ids]


def _special_tokens(directory: Path) -> dict[str, str]:
    """cls/sep/pad/unk/mask token names from tokenizer_config.json (or special_tokens_map.json),
    with BERT's names where neither says."""
    names = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
             "mask_token": "[MASK]"}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            raw = json.loads((directory / file).read_text())
        except (OSError, ValueError):
            continue
        for key in names:
            value = raw.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                names[key] = value
    return names
