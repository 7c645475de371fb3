"""A model's own class names (config.id2label) to ours: negative/positive for sentiment, BIO tags over
PER/ORG/LOC/MISC for NER.

One rule in one place, used twice: `reviews models add` maps a model's labels once, with the user's
`--map`, and writes our names into the copied config.json; the engines (sentiment.py, ner.py) run the
same rule without a user map when they load any model, so a version imported earlier (already in our
names) and a configured hub model with known synonyms (NEGATIVE, B-PERSON...) read the same way.

A class may be skipped (`--map neutral=skip`), and several classes may map to one name (two star
ratings to negative): `Folded` merges their logits with logsumexp, which is exactly summing their
probabilities, and drops skipped ones, which is renormalising over the classes kept.

Pure Python at import: the CLI imports it without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .types import NER_TYPES, SENTIMENT_LABELS, ModelLoadError

SKIP = "skip"

_SENTIMENT = {"negative": "negative", "neg": "negative", "positive": "positive", "pos": "positive", SKIP: SKIP}
# Only a two-class head says nothing but its order: LABEL_0 is negative there by convention (SST-2).
_GENERIC_PAIR = {"label_0": "negative", "label_1": "positive"}
_NER_TYPES = {"per": "PER", "pers": "PER", "person": "PER", "org": "ORG", "organization": "ORG",
              "organisation": "ORG", "loc": "LOC", "location": "LOC", "misc": "MISC", "miscellaneous": "MISC"}
# BIOES/BILOU read as BIO: a single or unit tag begins an entity, an end or last tag continues it.
_PREFIX = {"B": "B", "I": "I", "S": "B", "U": "B", "E": "I", "L": "I"}
_TAG = re.compile(r"^([BIESLU])[-_](.+)$", re.IGNORECASE)


class LabelError(ModelLoadError):
    """Labels that cannot be read as the task's classes; the message lists them and a `--map` example."""


@dataclass
class Mapping:
    original: list[str]  # config.id2label of the model, by class index
    names: list[str]  # ours, by class index ("skip" for a skipped sentiment class)
    how: dict[str, str] = field(default_factory=dict)  # original label -> "same" | "synonym" | "--map"
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.names != self.original


def parse_map(items: tuple[str, ...] | list[str] | str | None) -> dict[str, str]:
    """`--map LABEL_0=negative,LABEL_1=positive` (repeatable, comma-separated) as a dict."""
    if isinstance(items, str):
        items = [items]
    out: dict[str, str] = {}
    for item in items or ():
        for pair in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise LabelError(f"--map {pair!r}: expected LABEL=NAME, e.g. --map LABEL_0=negative,LABEL_1=positive")
            out[key.strip()] = value.strip()
    return out


def _lookup(user: dict[str, str], key: str) -> str | None:
    """The user's value for `key`, matched exactly first, then ignoring case."""
    if key in user:
        return user[key]
    folded = {k.lower(): v for k, v in user.items()}
    return folded.get(key.lower())


def map_labels(task: str, original: list[str], user: dict[str, str] | None = None) -> Mapping:
    """Our name for each of a model's classes, or LabelError naming what is missing."""
    user = user or {}
    known = {k.lower() for k in original}
    if task == "ner":
        known |= {split(t)[1].lower() for t in original}
    unused = [k for k in user if k.lower() not in known]
    if unused:
        raise LabelError(f"--map names {', '.join(map(repr, unused))}, which the model does not have; "
                         f"its labels are {', '.join(original)}")
    return _sentiment(original, user) if task == "sentiment" else _ner(original, user)


def _sentiment(original: list[str], user: dict[str, str]) -> Mapping:
    m = Mapping(original, [])
    missing = []
    for label in original:
        given = _lookup(user, label)
        if given is not None:
            name = _SENTIMENT.get(given.lower())
            if name is None:
                raise LabelError(f"--map {label}={given}: a sentiment class maps to negative, positive or skip")
            how = "--map"
        else:
            name = _SENTIMENT.get(label.lower()) or (_GENERIC_PAIR.get(label.lower()) if len(original) == 2 else None)
            how = "same" if name == label else "synonym"
        if name is None:
            missing.append(label)
            continue
        m.names.append(name)
        m.how[label] = how
    if missing:
        example = ",".join(f"{lb}=<negative|positive|skip>" for lb in missing)
        raise LabelError(f"sentiment labels not mapped: {', '.join(missing)} (known: negative/neg, positive/pos, "
                         f"and LABEL_0/LABEL_1 on a two-class head); say what each means, e.g. --map {example}")
    for needed in SENTIMENT_LABELS:
        if needed not in m.names:
            raise LabelError(f"the sentiment head has no {needed} class after mapping "
                             f"({', '.join(f'{o}->{n}' for o, n in zip(original, m.names))}); "
                             f"one of its labels must map to {needed}")
    return m


def split(tag: str) -> tuple[str, str]:
    """(prefix, type) of a model's tag: ("O", "") for O, ("I", tag) for a bare type (IO tagging)."""
    if tag.upper() == "O":
        return "O", ""
    hit = _TAG.match(tag)
    return (hit.group(1).upper(), hit.group(2)) if hit else ("I", tag)


def _ner(original: list[str], user: dict[str, str]) -> Mapping:
    m = Mapping(original, [])
    missing: dict[str, None] = {}  # unmapped types, in order, once each
    for tag in original:
        prefix, kind = split(tag)
        name, how = _ner_tag(tag, prefix, kind, user)
        if name is None:
            missing[kind or tag] = None
            continue
        m.names.append(name)
        m.how[tag] = how
    if missing:
        example = ",".join(f"{k}=<{'|'.join(NER_TYPES)}|skip>" for k in missing)
        raise LabelError(f"NER tags not mapped: types {', '.join(missing)} (known: PER/PERSON, ORG/ORGANIZATION, "
                         f"LOC/LOCATION, MISC/MISCELLANEOUS, any case, BIO/BIOES prefixes); map each type (or a "
                         f"single tag) to one of ours or skip it (read as O), e.g. --map {example}")
    if "O" not in m.names:
        raise LabelError(f"the NER head has no O tag after mapping ({', '.join(original)}): it cannot say "
                         "'not an entity'")
    kinds = {split(n)[1] for n in m.names} - {""}
    if not kinds:
        raise LabelError(f"the NER head has no entity tags after mapping ({', '.join(original)})")
    absent = [k for k in NER_TYPES if k not in kinds]
    if absent:
        m.warnings.append(f"no {'/'.join(absent)} tags: this model never finds such entities")
    return m


def _ner_tag(tag: str, prefix: str, kind: str, user: dict[str, str]) -> tuple[str | None, str]:
    """Our tag for one of the model's tags: a --map of the whole tag, then of its type, then synonyms."""
    given, whole = _lookup(user, tag), True
    if given is None and kind:
        given, whole = _lookup(user, kind), False
    if given is not None:
        value = given.strip()
        if value.lower() in (SKIP, "o"):
            return "O", "--map"
        g_prefix, g_kind = split(value)
        ours = _NER_TYPES.get(g_kind.lower())
        if ours is None:
            raise LabelError(f"--map {tag if whole else kind}={given}: an NER tag maps to one of "
                             f"{', '.join(NER_TYPES)} (or B-/I- of one), O or skip")
        # A bare type keeps the model's own prefix; a whole tag given with a prefix is taken as it is.
        keep = g_prefix if (whole and _TAG.match(value)) else _PREFIX.get(prefix, "I")
        return f"{_PREFIX.get(keep, 'I')}-{ours}", "--map"
    if prefix == "O" or tag.lower() == SKIP:
        return "O", "same" if tag == "O" else "synonym"
    ours = _NER_TYPES.get(kind.lower())
    if ours is None:
        return None, ""
    name = f"{_PREFIX.get(prefix, 'I')}-{ours}"
    return name, "same" if name == tag else "synonym"


def fold_plan(names: list[str]) -> tuple[list[str], list[list[int]] | None]:
    """The distinct names kept (skipped classes dropped) and, for each, the class indices merged
    into it; None where nothing needs merging or dropping, so the engine keeps its plain forward."""
    kept: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if name != SKIP:
            kept.setdefault(name, []).append(i)
    if list(kept) == names:
        return names, None
    return list(kept), list(kept.values())


class Folded:
    """A forward whose logits are merged per name: logsumexp over the classes of a group, so that a
    softmax over the result gives each name the sum of its classes' probabilities."""

    def __init__(self, forward, groups: list[list[int]]):
        self.inner, self.groups = forward, groups

    def __getattr__(self, name):  # device, context(), fast...: the wrapped forward's
        return getattr(self.inner, name)

    def __call__(self, input_ids, attention_mask, full=None):
        import torch

        hint = {} if full is None else {"full": full}  # the engine's padding hint, passed on when given
        logits = self.inner(input_ids, attention_mask, **hint).float()
        return torch.stack([logits[..., g].logsumexp(dim=-1) for g in self.groups], dim=-1)


def for_engine(task: str, model, forward):
    """(names, forward) for an engine: the model's labels in our names, its forward folded where
    classes merge or are skipped. Unknown labels raise LabelError: the model must be imported with
    `reviews models add TASK SOURCE --map ...`, which stores the mapping."""
    original = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    try:
        mapping = map_labels(task, original)
    except LabelError as exc:
        raise LabelError(f"{exc}; register the model with `reviews models add {task} SOURCE` and that --map, "
                         "which stores the mapping with the version") from None
    names, groups = fold_plan(mapping.names)
    return names, (Folded(forward, groups) if groups else forward)
