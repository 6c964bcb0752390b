"""Specification of tokenizer.py: BERT's WordPiece read offline from a vocab.txt or a tokenizer.json equals the
`transformers` BertTokenizer and the `tokenizers` BertWordPieceTokenizer on a small vocabulary; bytes round-trip; the
layout tokens are taming-transformers' grid tokens; truncation keeps the end token and is said once."""
import json

import pytest
import torch

from utils.tokenizer import ByteTokenizer, LayoutTokenizer, from_state, load_tokenizer

VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'a', 'red', 'disk', 'blue', 'rect', '##angle', '##s', 'on',
         'the', 'green', 'back', '##ground', 'cafe', ',', '.', '!', '$', '-', '中', '国', 'un', '##known', 'and', 'x']
TEXTS = ["A red disk on the green background.", "Blue RECTANGLES, and a red disk!", "café crème", "un-known $x",
         "中国 disk", "  spaced\tout\n words ", "", "zzz unknownword", "a" * 120, "rectangle\x00s and\u200bdisk",
         "Ärger", "x" + "s" * 3]


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / 'vocab.txt'
    path.write_text('\n'.join(VOCAB) + '\n', encoding='utf-8')
    return str(path)


def test_wordpiece_equals_transformers(vocab_file):
    transformers = pytest.importorskip('transformers')
    ref = transformers.BertTokenizer(vocab_file, do_lower_case=True)
    ours = load_tokenizer(vocab_file)
    for text in TEXTS:
        assert ours.ids(text) == ref(text)['input_ids'], text
    ids, mask = ours.encode(TEXTS[:3], max_length=16)
    expected = ref(TEXTS[:3], padding='max_length', max_length=16, truncation=True, return_tensors='pt')
    assert torch.equal(ids, expected['input_ids']) and torch.equal(mask, expected['attention_mask'].bool())


def test_wordpiece_equals_tokenizers_and_its_json(vocab_file, tmp_path):
    tokenizers = pytest.importorskip('tokenizers')
    ref = tokenizers.BertWordPieceTokenizer(vocab_file, lowercase=True)
    json_path = tmp_path / 'tokenizer.json'
    ref.save(str(json_path))
    for ours in (load_tokenizer(vocab_file), load_tokenizer(str(json_path))):
        for text in TEXTS:
            assert ours.ids(text) == ref.encode(text).ids, text


def test_truncation_keeps_the_end_token_and_is_said_once(vocab_file, capsys):
    transformers = pytest.importorskip('transformers')
    ref = transformers.BertTokenizer(vocab_file, do_lower_case=True)
    ours = load_tokenizer(vocab_file)
    type(ours).__mro__[-2].said_truncated = False  # Tokenizer's flag: said once per process
    long = ' '.join(['red disk'] * 20)
    ids, mask = ours.encode([long, long], max_length=8)
    assert ids[0].tolist() == ref(long, max_length=8, truncation=True)['input_ids'] and mask.all()
    assert capsys.readouterr().err.count('cut to') == 1


def test_bytes_round_trip_and_null_sequence():
    tok = ByteTokenizer()
    ids, mask = tok.encode(["héllo", ""], max_length=10)
    body = ids[0, 1:int(mask[0].sum()) - 1] - 3
    assert bytes(body.tolist()).decode('utf-8') == "héllo"
    assert ids[1].tolist() == [tok.bos_id, tok.eos_id] + [tok.pad_id] * 8  # "" is BOS EOS PAD...
    assert from_state(tok.state()).ids("x") == tok.ids("x")


def test_layout_tokens_are_tamings_grid():
    tok = LayoutTokenizer(['disk', 'rectangle'], vocab_size=1024, max_objects=3)  # a 32 x 32 grid
    ids, mask = tok.encode([[('rectangle', 0.0, 0.5, 1.0, 1.0)], []])
    n = 32
    assert ids[0, :3].tolist() == [1, round(0.5 * (n - 1)) * n + 0, n * n - 1]  # (1, 1) is the token `none` itself
    assert ids[0, 3:].eq(tok.none).all() and ids[1].eq(tok.none).all() and mask.all()  # LDM reads `none` too
    (name, x0, y0, x1, y1), = tok.decode(ids[0])
    assert name == 'rectangle' and (x0, x1, y1) == (0.0, 1.0, 1.0) and abs(y0 - 0.5) <= 0.5 / (n - 1)
    assert from_state(tok.state()).ids([(0, .1, .2, .3, .4)]) == tok.ids([(0, .1, .2, .3, .4)])


@pytest.mark.parametrize('box, message', [(('disk', 0.2, 0.2, 1.3, 0.5), 'outside the image'),
                                          (('cat', 0.1, 0.1, 0.2, 0.2), "'cat' is not one of the 2 classes")])
def test_layout_bad_boxes_are_one_sentence(box, message):
    with pytest.raises(ValueError, match=message):
        LayoutTokenizer(['disk', 'rectangle']).encode([[box]])


def test_tokenizer_files_that_do_not_parse(tmp_path):
    with pytest.raises(ValueError, match='does not exist.*bert-base-uncased'):
        load_tokenizer(str(tmp_path / 'missing.txt'))
    bad = tmp_path / 'vocab.txt'
    bad.write_text('hello\nworld\n')
    with pytest.raises(ValueError, match='does not parse as a BERT vocab.txt.*no .UNK. token'):
        load_tokenizer(str(bad))
    bad_json = tmp_path / 'tokenizer.json'
    bad_json.write_text('{"model": {"type": "BPE"')
    with pytest.raises(ValueError, match='does not parse as a tokenizers tokenizer.json'):
        load_tokenizer(str(bad_json))
    bad_json.write_text(json.dumps({'model': {'type': 'BPE', 'vocab': {}}}))
    with pytest.raises(ValueError, match="only WordPiece"):
        load_tokenizer(str(bad_json))
