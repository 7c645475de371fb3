"""Metrics on hand-made cases (seqeval conventions included), the engine-backed evaluation functions,
and the `reviews evaluate` command on small files the tests write."""

import gzip
import json

import pytest
from click.testing import CliRunner

from cli.evaluate import evaluate as evaluate_group
from cli.main import main
from worker.nlp.types import Entity
from worker.training import data
from worker.training import evaluate as ev
from worker.training.data import NerSentence, SentimentExample, read_conll, sentence_text
from worker.training.train import bio_to_spans

POS = ["great film", "loved the acting", "good story", "great music and good acting", "loved it"]


# -- sentiment metrics -------------------------------------------------------------------------------


def test_sentiment_metrics():
    assert ev.sentiment_metrics([1, 1, 0, 0], [1, 0, 0, 1]) == {"accuracy": 0.5, "f1": 0.5, "n": 4}
    # precision 2/3, recall 1 -> F1 0.8
    m = ev.sentiment_metrics([1, 1, 0, 0], [1, 1, 1, 0])
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.8)
    # No positive predicted and none to find: F1 is 0 by convention, accuracy still counts.
    assert ev.sentiment_metrics([0, 0], [0, 0]) == {"accuracy": 1.0, "f1": 0.0, "n": 2}
    assert ev.sentiment_metrics([], []) == {"accuracy": 0.0, "f1": 0.0, "n": 0}
    # A label the engine could not map (-1) is simply wrong.
    assert ev.sentiment_metrics([1, 0], [-1, -1])["accuracy"] == 0.0


# -- seqeval conventions -----------------------------------------------------------------------------


@pytest.mark.parametrize("tags, spans", [
    ([], set()),
    (["O", "O"], set()),
    (["B-PER", "I-PER", "O"], {(0, 1, "PER")}),
    (["B-PER", "B-PER"], {(0, 0, "PER"), (1, 1, "PER")}),  # B after B: two entities
    (["I-PER", "I-PER", "O"], {(0, 1, "PER")}),  # I- at the start begins an entity (IOB1 style)
    (["O", "I-LOC"], {(1, 1, "LOC")}),  # I- after O begins an entity
    (["B-PER", "I-LOC", "I-LOC"], {(0, 0, "PER"), (1, 2, "LOC")}),  # a type change ends the entity
    (["B-ORG", "I-ORG", "I-ORG"], {(0, 2, "ORG")}),  # an entity that runs to the end of the sentence
    (["B-MISC", "O", "I-MISC"], {(0, 0, "MISC"), (2, 2, "MISC")}),  # O breaks an entity
])
def test_bio_spans_read_as_seqeval_reads_them(tags, spans):
    assert ev.bio_spans(tags) == spans


def test_ner_metrics_are_exact_match_micro_averages():
    gold = [{(0, 1, "PER"), (3, 3, "LOC")}, {(0, 0, "ORG")}, set()]
    pred = [{(0, 1, "PER"), (3, 4, "LOC")},  # a boundary off by one is a miss and a false alarm
            {(0, 0, "MISC")},  # the right span with the wrong type is a miss and a false alarm
            {(2, 2, "PER")}]  # a false alarm in a sentence without entities
    m = ev.ner_metrics(gold, pred)
    assert (m["precision"], m["recall"]) == (0.25, pytest.approx(1 / 3))
    assert m["f1"] == pytest.approx(2 * 0.25 * (1 / 3) / (0.25 + 1 / 3))
    assert m["n"] == 3 and m["entities"] == 3
    per = m["per_type"]
    assert list(per) == ["PER", "ORG", "LOC", "MISC"]  # the CoNLL order
    assert per["PER"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert per["LOC"]["f1"] == 0.0 and per["ORG"]["recall"] == 0.0 and per["MISC"]["support"] == 0
    assert ev.ner_metrics([set()], [set()])["f1"] == 0.0


def test_character_spans_map_back_to_tokens():
    sentence = NerSentence(["New", "York", "'s", "U.S.", "office"], ["B-LOC", "I-LOC", "O", "B-LOC", "O"])
    text, spans = sentence_text(sentence)
    assert text == "New York 's U.S. office" and spans[3] == (12, 16)
    assert bio_to_spans(sentence.tags, spans) == [(0, 8, "LOC"), (12, 16, "LOC")]
    assert ev.char_to_token_spans([Entity("LOC", "New York", 0, 8, 0.9)], spans) == {(0, 1, "LOC")}
    # A span that covers part of a token is read as covering that token.
    assert ev.char_to_token_spans([Entity("LOC", "U.S", 12, 15, 0.9)], spans) == {(3, 3, "LOC")}
    # A span over the space between tokens only touches no token.
    assert ev.char_to_token_spans([Entity("LOC", " ", 8, 9, 0.9)], spans) == set()


class FakeNer:
    """Hand-made predictions, as the engine would return them."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def predict(self, texts):
        self.calls.append(list(texts))
        return [self.answers[t] for t in texts]


def test_evaluate_ner_joins_tokens_and_compares_spans():
    sents = [NerSentence(["John", "Smith", "visited", "Paris", "."], ["B-PER", "I-PER", "O", "B-LOC", "O"]),
             NerSentence(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"])]
    fake = FakeNer({
        "John Smith visited Paris .": [Entity("PER", "John Smith", 0, 10, 0.9), Entity("LOC", "Paris", 19, 24, 0.9)],
        "EU rejects German call": [Entity("LOC", "EU", 0, 2, 0.9), Entity("MISC", "German", 11, 17, 0.9)],
    })
    m = ev.evaluate_ner(fake, sents, batch_size=1, progress=lambda done, total: None)
    assert fake.calls == [["John Smith visited Paris ."], ["EU rejects German call"]]
    assert (m["precision"], m["recall"], m["entities"]) == (0.75, 0.75, 4)
    assert m["per_type"]["ORG"]["recall"] == 0.0 and m["per_type"]["LOC"]["precision"] == 0.5


def test_evaluate_sentiment_through_the_engine(tiny_models):
    examples = [SentimentExample(t, 1) for t in POS] + [SentimentExample("awful film", 0)]
    seen = []
    m = ev.evaluate_sentiment(str(tiny_models["sentiment"]), examples, batch_size=4,
                              progress=lambda done, total: seen.append((done, total)))
    assert seen == [(4, 6), (6, 6)]
    # The figure is the engine's own agreement with the labels, however good the random model is.
    from worker.nlp.sentiment import load_sentiment

    predicted = load_sentiment(str(tiny_models["sentiment"])).predict([e.text for e in examples])
    right = sum((p.label == "positive") == bool(e.label) for p, e in zip(predicted, examples))
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(right / 6)


# -- data readers: every bad line is one ValueError `PATH:LINE: reason` ------------------------------


def bad(read, path) -> str:
    """The message of the error `read(path)` raises, checked to be a plain one-line ValueError
    (not a UnicodeDecodeError or JSONDecodeError, which are ValueErrors too) that names the file."""
    with pytest.raises(ValueError) as info:
        read(path)
    assert type(info.value) is ValueError
    msg = str(info.value)
    assert msg.startswith(f"{path}:") and "\n" not in msg
    return msg[len(str(path)) + 1:]


def test_conll_lines_without_a_bio_tag_are_named(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("-DOCSTART- -X- O\n\njohn B-PER\nloved\n")
    assert bad(read_conll, f).startswith("4: expected a token and a BIO tag")
    for n, tag in enumerate(("B-", "I-", "E-PER", "PER", "b-PER", "O-PER"), 1):
        f.write_text(f"john B-PER\nsmith {tag}\n")
        assert bad(read_conll, f) == f"2: '{tag}' is not a BIO tag (O, B-TYPE or I-TYPE)"
    # Every column but the first and the last is ignored; I- after O stays legal (raw CoNLL-2003 is IOB1).
    f.write_text("EU NNP B-NP I-ORG\nrejects VBZ B-VP O\n\n-DOCSTART- O\nGerman JJ B-NP B-MISC\n")
    assert read_conll(f) == [NerSentence(["EU", "rejects"], ["I-ORG", "O"]), NerSentence(["German"], ["B-MISC"])]
    assert ev.bio_spans(read_conll(f)[0].tags) == {(0, 0, "ORG")}


@pytest.mark.parametrize("line, reason", [
    ('{"text": "ok", "label": 1', "invalid JSON at column 26: Expecting ',' delimiter"),
    ("[" * 100_000, "invalid JSON (nested too deeply)"),
    ('{"text": "ok", "label": ' + "1" * 5000 + "}", "invalid JSON (Exceeds the limit"),
    ('["great film", "positive"]', "expected a JSON object with text and label, got list"),
    ('"great film"', "expected a JSON object with text and label, got str"),
    ('{"label": "positive"}', 'missing "text"'),
    ('{"text": "great film"}', 'missing "label"'),
    ('{"text": "", "label": "positive"}', "text must be a non-empty string, got ''"),
    ('{"text": "  ", "label": "positive"}', "text must be a non-empty string"),
    ('{"text": 5, "label": "positive"}', "text must be a non-empty string, got 5"),
    ('{"text": null, "label": "positive"}', "text must be a non-empty string, got None"),
    ('{"text": "great film", "label": "maybe"}', "label must be negative/positive or 0/1, got 'maybe'"),
    ('{"text": "great film", "label": 2}', "label must be negative/positive or 0/1, got 2"),
    ('{"text": "great film", "label": true}', "label must be negative/positive or 0/1, got True"),
    ('{"text": "great film", "label": null}', "label must be negative/positive or 0/1, got None"),
    ('{"text": "bad \\ud800 half", "label": 1}', "text holds a lone surrogate '\\ud800' at character 5"),
])
def test_bad_jsonl_lines_are_named(tmp_path, line, reason):
    f = tmp_path / "s.jsonl"
    # Line 3: blank lines count, as an editor counts them.
    f.write_text('{"text": "fine", "label": "positive"}\n\n' + line + "\n")
    assert bad(data.read_sentiment_jsonl, f).startswith(f"3: {reason}")
    gz = tmp_path / "s.jsonl.gz"
    gz.write_bytes(gzip.compress(f.read_bytes()))
    assert bad(data.read_sentiment, gz).startswith(f"3: {reason}")


def test_bad_tsv_lines_are_named(tmp_path):
    f = tmp_path / "s.tsv"
    f.write_text("label\tsentence\n1\tgreat film\n0 awful film\n")
    assert bad(data.read_glue_tsv, f) == "3: expected label<TAB>sentence"
    f.write_text("label\tsentence\n1\tgreat film\n2\tawful film\n")
    assert bad(data.read_glue_tsv, f) == "3: label must be negative/positive or 0/1, got '2'"
    f.write_text("1\tgreat film\n0\t \n")
    assert bad(data.read_glue_tsv, f) == "2: text must be a non-empty string, got ' '"


def test_invalid_utf8_names_the_line_and_the_byte(tmp_path):
    for name, read, content, where in [
        ("s.tsv", data.read_glue_tsv, b"1\tgreat film\n0\tawful \xff film\n", "byte 0xff at byte 9"),
        ("s.jsonl", data.read_sentiment_jsonl, b'{"text": "ok", "label": 1}\n{"text": "awful \xff", "label": 0}\n',
         "byte 0xff at byte 17"),
        ("c.txt", read_conll, b"John B-PER\nM\xc3nchen B-LOC\n", "byte 0xc3 at byte 2"),  # a sequence cut short
    ]:
        f = tmp_path / name
        f.write_bytes(content)
        assert bad(read, f) == f"2: invalid UTF-8: {where} of the line"


def test_truncated_or_fake_gzip_is_named(tmp_path):
    whole = gzip.compress("".join(json.dumps({"text": f"film {i} " * 20, "label": i % 2}) + "\n"
                                  for i in range(2000)).encode())
    f = tmp_path / "s.jsonl.gz"
    f.write_bytes(whole[: len(whole) // 2])
    msg = bad(data.read_sentiment_jsonl, f)
    line, _, reason = msg.partition(": ")
    assert int(line) > 1 and reason.startswith("cannot decompress: Compressed file ended")
    f.write_bytes(b'{"text": "not compressed", "label": 1}\n')
    assert bad(data.read_sentiment_jsonl, f).startswith("1: cannot decompress: Not a gzipped file")
    conll = tmp_path / "c.txt.gz"
    # Only the trailer (CRC and length) cut off: every line is read, the error is after the last.
    conll.write_bytes(gzip.compress(b"John B-PER\n" * 5000)[:-8])
    assert bad(read_conll, conll).startswith("5001: cannot decompress")


def test_a_bom_and_windows_line_endings_are_read(tmp_path):
    f = tmp_path / "s.tsv"
    f.write_bytes("\ufefflabel\tsentence\r\n1\tgreat film\r\n0\tawful film\r\n".encode())
    assert data.read_glue_tsv(f) == [SentimentExample("great film", 1), SentimentExample("awful film", 0)]
    f = tmp_path / "s.jsonl"
    f.write_bytes('\ufeff{"text": "great film", "label": "positive"}\r\n'.encode())
    assert data.read_sentiment_jsonl(f) == [SentimentExample("great film", 1)]
    f = tmp_path / "c.txt"
    f.write_bytes("\ufeff-DOCSTART- O\r\n\r\nParis B-LOC\r\n".encode())
    assert read_conll(f) == [NerSentence(["Paris"], ["B-LOC"])]
    # A surrogate pair escaped in JSON is one real character, not an error.
    f.write_text('{"text": "great \\ud83c\\udfac", "label": 1}\n')
    assert data.read_sentiment_jsonl(f) == [SentimentExample("great \U0001f3ac", 1)]


# -- the command -------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": "positive"}) + "\n" for t in POS))
    gz = tmp_path / "s.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        for i, t in enumerate(POS):
            f.write(json.dumps({"id": str(i), "text": t, "label": "negative" if i % 2 else "positive"}) + "\n")
    tsv = tmp_path / "s.tsv"
    tsv.write_text("label\tsentence\n1\tgreat film\n0\tawful film\n")
    conll = tmp_path / "c.txt"
    conll.write_text("-DOCSTART- -X- -X- O\n\njohn NNP B-NP B-PER \nloved O\nparis B-LOC\n\nmary B-PER\n\n")
    return {"jsonl": jsonl, "gz": gz, "tsv": tsv, "conll": conll, "dir": tmp_path}


@pytest.fixture
def env(tiny_models, tmp_path):
    return {"REVIEWS_DATABASE_URL": f"sqlite:///{tmp_path / 'none.db'}",
            "REVIEWS_SENTIMENT_MODEL": str(tiny_models["sentiment"]), "REVIEWS_NER_MODEL": str(tiny_models["ner"]),
            "REVIEWS_MAX_LENGTH": "64", "REVIEWS_WINDOW_STRIDE": "16"}


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_evaluate_sentiment_command(files, env):
    runner = CliRunner()
    for key, n in (("jsonl", 5), ("tsv", 2), ("gz", 5)):
        out = runner.invoke(main, ["evaluate", "sentiment", str(files[key])], env=env)
        assert out.exit_code == 0, out.output
        assert "accuracy" in out.output and "loaded in" in out.output
        last = last_json(out.output)
        assert set(last) == {"accuracy", "f1", "n"} and last["n"] == n
    out = runner.invoke(main, ["evaluate", "sentiment", str(files["gz"]), "--last", "3", "--limit", "2",
                               "--batch-size", "1"], env=env)
    assert out.exit_code == 0, out.output
    assert last_json(out.output)["n"] == 2 and "1 positive, 1 negative" in out.output  # records 2 and 3


def test_evaluate_ner_command(files, env):
    out = CliRunner().invoke(main, ["evaluate", "ner", str(files["conll"])], env=env)
    assert out.exit_code == 0, out.output
    last = last_json(out.output)
    assert last["n"] == 2 and last["entities"] == 3
    assert {"precision", "recall", "f1", "n", "per_type"} <= set(last)
    assert set(last["per_type"]) <= {"PER", "ORG", "LOC", "MISC"}
    assert len(read_conll(files["conll"])) == 2


def test_the_group_runs_on_its_own(files, env):
    """`python -m cli.evaluate` has no `reviews` context object: settings come from the environment."""
    out = CliRunner().invoke(evaluate_group, ["sentiment", str(files["tsv"])], env=env)
    assert out.exit_code == 0, out.output
    assert last_json(out.output)["n"] == 2


def test_missing_or_broken_model_is_one_clear_error(files, env):
    runner = CliRunner()
    bad = runner.invoke(main, ["evaluate", "sentiment", str(files["tsv"]), "--model", str(files["dir"] / "nope")],
                        env=env)
    assert bad.exit_code == 1 and "no such directory" in bad.output and "Traceback" not in bad.output
    broken = files["dir"] / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    bad = runner.invoke(main, ["evaluate", "ner", str(files["conll"]), "--model", str(broken)], env=env)
    assert bad.exit_code == 1 and "cannot load ner model" in bad.output and "Traceback" not in bad.output


def test_bad_data_file_is_one_clear_error(files, env):
    bad = files["dir"] / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "positive"}\n{"text": "no label"}\n')
    out = CliRunner().invoke(main, ["evaluate", "sentiment", str(bad)], env=env)
    assert out.exit_code == 1 and "bad.jsonl:2" in out.output
    empty = files["dir"] / "empty.tsv"
    empty.write_text("label\tsentence\n")
    out = CliRunner().invoke(main, ["evaluate", "sentiment", str(empty)], env=env)
    assert out.exit_code == 1 and "no examples" in out.output


def test_a_conll_line_without_a_tag_is_named_once(files, env):
    bad = files["dir"] / "notag.txt"
    bad.write_text("John B-PER\nloved\n\n")
    out = CliRunner().invoke(main, ["evaluate", "ner", str(bad)], env=env)
    assert out.exit_code == 1 and out.output.count(str(bad)) == 1
    assert f"{bad}:2: expected a token and a BIO tag" in out.output and "Traceback" not in out.output
