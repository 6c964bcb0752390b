"""
Tokenizers for tau_theta (model.TextEncoder), all offline: a caption or a layout -> token ids (B, L) and a padding mask
(B, L), True = a real token, padded to the encoder's max_length as LDM's BERTTokenizer does (padding="max_length").

- 'bytes' (the default, no download): a caption's UTF-8 bytes, between BOS and EOS, ids shifted past the 3 specials as
  ByT5 shifts them (pad 0, bos 1, eos 2, byte b -> b + 3).
- BERT's WordPiece, read from a vocab.txt (bert-base-uncased's is what LDM's BERTTokenizer uses) or from a `tokenizers`
  tokenizer.json with a WordPiece model: BERT's basic tokenizer (clean, split CJK, lowercase and strip accents, split
  punctuation), then greedy longest-match-first WordPiece, as transformers' BertTokenizer; [CLS] text [SEP] [PAD]...
- Layouts (LayoutTokenizer): boxes (class, x0, y0, x1, y1) in [0, 1] image coordinates -> (class, top-left, bottom-right)
  triples on a coordinate grid, as taming-transformers' ObjectsBoundingBoxConditionalBuilder, which LDM's
  layout-to-image model reads (BERTEmbedder over an 8192-token vocabulary).

A tokenizer is rebuilt from the checkpoint that recorded it (tokenizer.state() -> from_state), never from a path.
"""
import json
import math
import os
import sys
import unicodedata

import torch

BERT_VOCAB_URL = 'https://huggingface.co/google-bert/bert-base-uncased/resolve/main/vocab.txt'


class Tokenizer:
    """What every tokenizer shares: ids(text) -> the ids of one text with its special tokens, and encode."""
    pad_id = 0
    said_truncated = False  # the first truncation is said, once per process (Tokenizer.said_truncated)

    def encode(self, texts, max_length):
        """texts (a list of B strings) -> ids (B, max_length) long and mask (B, max_length) bool. A text longer than
        max_length keeps its first max_length - 1 ids and its end token, as BERT's truncation=True does."""
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        for b, text in enumerate(texts):
            seq = self.ids(text)
            if len(seq) > max_length:
                if not Tokenizer.said_truncated:
                    print(f"note: a caption of {len(seq)} tokens is cut to the encoder's {max_length} (said once): "
                          f"{text[:60]!r}...", file=sys.stderr)
                    Tokenizer.said_truncated = True
                seq = seq[:max_length - 1] + seq[-1:]
            ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        return ids, self.mask(ids)

    def mask(self, ids):
        return ids != self.pad_id


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes between BOS and EOS; 259 ids."""
    bos_id, eos_id, vocab_size = 1, 2, 259

    def ids(self, text):
        return [self.bos_id] + [b + 3 for b in text.encode('utf-8')] + [self.eos_id]

    def state(self):
        return {'kind': 'bytes'}


def _is_whitespace(ch):
    return ch in ' \t\n\r' or unicodedata.category(ch) == 'Zs'


def _is_control(ch):
    return ch not in '\t\n\r' and unicodedata.category(ch).startswith('C')


def _is_punctuation(ch):
    cp = ord(ch)  # ASCII symbols such as $ and ^ count as punctuation for BERT, as in transformers' _is_punctuation
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or unicodedata.category(ch).startswith('P')


def _is_cjk(cp):
    return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                                             (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


class WordPieceTokenizer(Tokenizer):
    """BERT's tokenizer (transformers' BertTokenizer: BasicTokenizer then WordpieceTokenizer) from a vocabulary list."""

    def __init__(self, vocab, lowercase=True, strip_accents=None, unk='[UNK]', cls='[CLS]', sep='[SEP]', pad='[PAD]',
                 prefix='##', max_chars=100):
        self.vocab = list(vocab)
        self.index = {tok: i for i, tok in enumerate(self.vocab)}
        missing = [t for t in (unk, cls, sep, pad) if t not in self.index]
        if missing:
            raise ValueError(f"the vocabulary has no {missing[0]} token, which BERT's tokenizer needs")
        self.lowercase, self.strip_accents = lowercase, lowercase if strip_accents is None else strip_accents
        self.unk, self.cls, self.sep, self.pad, self.prefix, self.max_chars = unk, cls, sep, pad, prefix, max_chars
        self.pad_id, self.vocab_size = self.index[pad], len(self.vocab)

    def basic(self, text):
        """BERT's BasicTokenizer: words and punctuation marks."""
        text = ''.join(' ' if _is_whitespace(c) else c for c in text if not (ord(c) in (0, 0xFFFD) or _is_control(c)))
        text = ''.join(f' {c} ' if _is_cjk(ord(c)) else c for c in text)
        words = []
        for word in unicodedata.normalize('NFC', text).split():
            if self.lowercase:
                word = word.lower()
            if self.strip_accents:
                word = ''.join(c for c in unicodedata.normalize('NFD', word) if unicodedata.category(c) != 'Mn')
            piece = ''
            for c in word:  # each punctuation mark is a word of its own
                if _is_punctuation(c):
                    words += [piece, c] if piece else [c]
                    piece = ''
                else:
                    piece += c
            if piece:
                words.append(piece)
        return words

    def wordpiece(self, word):
        """Greedy longest-match-first subwords, continuations prefixed with ##; a word with no cover is [UNK]."""
        if len(word) > self.max_chars:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start and (self.prefix if start else '') + word[start:end] not in self.index:
                end -= 1
            if end == start:
                return [self.unk]
            pieces.append((self.prefix if start else '') + word[start:end])
            start = end
        return pieces

    def ids(self, text):
        pieces = [p for w in self.basic(text) for p in self.wordpiece(w)]
        return [self.index[self.cls]] + [self.index[p] for p in pieces] + [self.index[self.sep]]

    def state(self):
        return {'kind': 'wordpiece', 'vocab': self.vocab, 'lowercase': self.lowercase,
                'strip_accents': self.strip_accents, 'unk': self.unk, 'cls': self.cls, 'sep': self.sep,
                'pad': self.pad, 'prefix': self.prefix, 'max_chars': self.max_chars}


def read_vocab_txt(path):
    """BERT's vocab.txt: one token a line, the line number its id."""
    with open(path, encoding='utf-8') as f:
        vocab = [line.rstrip('\n').rstrip('\r') for line in f]
    while vocab and vocab[-1] == '':
        vocab.pop()
    return WordPieceTokenizer(vocab)


def read_tokenizer_json(path):
    """A `tokenizers` tokenizer.json with a WordPiece model (BERT's); its BertNormalizer settings are kept."""
    with open(path, encoding='utf-8') as f:
        spec = json.load(f)
    model = spec.get('model') or {}
    if model.get('type') != 'WordPiece':
        raise ValueError(f"its model is {model.get('type')!r}, and only WordPiece (BERT's) is read here")
    vocab = sorted(model['vocab'], key=model['vocab'].get)
    if [model['vocab'][t] for t in vocab] != list(range(len(vocab))):
        raise ValueError("its WordPiece ids are not 0..N-1")
    norm = spec.get('normalizer') or {}
    specials = [t['content'] for t in spec.get('added_tokens') or []]
    cls, sep = ('[CLS]', '[SEP]')
    post = spec.get('post_processor') or {}
    if post.get('type') == 'TemplateProcessing':
        ends = [p['SpecialToken']['id'] for p in post['single'] if 'SpecialToken' in p]
        if len(ends) == 2:
            cls, sep = ends
    pad = (spec.get('padding') or {}).get('pad_token') or ('[PAD]' if '[PAD]' in specials or '[PAD]' in vocab else None)
    return WordPieceTokenizer(vocab, lowercase=norm.get('lowercase', True), strip_accents=norm.get('strip_accents'),
                              unk=model.get('unk_token', '[UNK]'), cls=cls, sep=sep, pad=pad or '[PAD]',
                              prefix=model.get('continuing_subword_prefix', '##'),
                              max_chars=model.get('max_input_chars_per_word', 100))


def load_tokenizer(spec):
    """--tokenizer: 'bytes', or the path of a BERT vocab.txt or a `tokenizers` tokenizer.json. A problem is a
    ValueError of one sentence for the caller's die()."""
    if spec == 'bytes':
        return ByteTokenizer()
    if not os.path.isfile(spec):
        raise ValueError(f"--tokenizer {spec} does not exist; pass 'bytes' (no download), or a BERT vocab.txt such as "
                         f"bert-base-uncased's, which LDM uses ({BERT_VOCAB_URL}), or a tokenizers tokenizer.json.")
    try:
        return read_tokenizer_json(spec) if spec.endswith('.json') else read_vocab_txt(spec)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:  # json's errors are ValueErrors
        kind = 'a tokenizers tokenizer.json' if spec.endswith('.json') else 'a BERT vocab.txt (one token a line)'
        raise ValueError(f"--tokenizer {spec} does not parse as {kind} ({type(e).__name__}: {str(e)[:120]}); pass "
                         f"bert-base-uncased's vocab.txt ({BERT_VOCAB_URL}) or 'bytes'.") from None


# -----------------------------------------------------------------------------
# layouts: boxes as taming-transformers' ObjectsBoundingBoxConditionalBuilder tokenises them for LDM

class LayoutTokenizer(Tokenizer):
    """Boxes (class, x0, y0, x1, y1), coordinates in [0, 1] of the image, -> max_objects triples (class, token of
    (x0, y0), token of (x1, y1)) padded with the token `none` = vocab_size - 1. A corner (x, y) is one token of a
    no_sections x no_sections grid: round(y (n - 1)) n + round(x (n - 1)), n = int(sqrt(vocab_size)) (taming's
    tokenize_coordinates). Classes and corners share the vocabulary, as in taming; LDM's OpenImages model uses 8192
    tokens and 30 objects (92 = 3 * 30 + 2 with taming's crop tokens, which a whole image does not need)."""

    def __init__(self, classes, vocab_size=8192, max_objects=30):
        self.classes, self.vocab_size, self.max_objects = list(classes), vocab_size, max_objects
        self.no_sections = int(math.sqrt(vocab_size))
        self.none = self.pad_id = vocab_size - 1
        if len(self.classes) >= self.none:
            raise ValueError(f"{len(self.classes)} layout classes do not fit a vocabulary of {vocab_size} tokens")

    def tokenize_coordinates(self, x, y):
        n = self.no_sections
        return int(round(y * (n - 1))) * n + int(round(x * (n - 1)))  # taming's tokenize_coordinates

    def coordinates_from_token(self, token):
        n = self.no_sections
        return token % n / (n - 1), token // n / (n - 1)

    def class_id(self, name):
        if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < len(self.classes):
            return name
        if name in self.classes:
            return self.classes.index(name)
        raise ValueError(f"layout class {name!r} is not one of the {len(self.classes)} classes this model knows "
                         f"({', '.join(map(str, self.classes[:8]))}{', ...' if len(self.classes) > 8 else ''}).")

    def parse(self, text):
        """A layout written as 'class x0 y0 x1 y1; class x0 y0 x1 y1' (sample.py --prompt) -> [(class id, x0, y0, x1,
        y1)], checked as ids() checks it; '' is the empty layout."""
        boxes = []
        for part in filter(str.strip, text.split(';')):
            words = part.split()
            try:
                coords = [float(v) for v in words[-4:]]
            except ValueError:
                coords = []
            if len(words) < 5 or len(coords) != 4:
                raise ValueError(f"the layout {part.strip()!r} is not 'class x0 y0 x1 y1' (a class name, then the box's "
                                 f"corners in [0, 1] of the image); separate boxes with ';'.")
            boxes.append((self.class_id(' '.join(words[:-4])), *coords))
        self.ids(boxes)  # the same checks as training's
        return boxes

    def ids(self, boxes):
        seq = []
        for box in boxes[:self.max_objects]:
            name, (x0, y0, x1, y1) = box[0], (float(v) for v in box[1:5])
            if not 0 <= x0 <= x1 <= 1 or not 0 <= y0 <= y1 <= 1:
                raise ValueError(f"the box {list(box)} lies outside the image or is inverted; give x0 <= x1 and y0 <= y1 "
                                 f"in [0, 1] of the image's width and height.")
            seq += [self.class_id(name), self.tokenize_coordinates(x0, y0), self.tokenize_coordinates(x1, y1)]
        return seq

    def encode(self, layouts, max_length=None):
        """layouts (B lists of boxes) -> ids (B, 3 max_objects), mask (B, 3 max_objects); more boxes than max_objects
        keep the first (said once)."""
        L = 3 * self.max_objects
        ids = torch.full((len(layouts), L), self.none, dtype=torch.long)
        for b, boxes in enumerate(layouts):
            if len(boxes) > self.max_objects and not Tokenizer.said_truncated:
                print(f"note: a layout of {len(boxes)} boxes keeps its first {self.max_objects} (said once)",
                      file=sys.stderr)
                Tokenizer.said_truncated = True
            seq = self.ids(boxes)
            ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        return ids, self.mask(ids)

    def mask(self, ids):  # all True: LDM reads the `none` triples too, and a layout with no box must attend to something
        return torch.ones_like(ids, dtype=torch.bool)

    def decode(self, ids):
        """ids (3 max_objects,) -> [(class, x0, y0, x1, y1)], taming's inverse_build."""
        out, ids = [], ids.tolist()
        for c, a, b in zip(ids[0::3], ids[1::3], ids[2::3]):
            if c != self.none:
                out.append((self.classes[c], *self.coordinates_from_token(a), *self.coordinates_from_token(b)))
        return out

    def state(self):
        return {'kind': 'layout', 'classes': self.classes, 'vocab_size': self.vocab_size,
                'max_objects': self.max_objects}


def from_state(state):
    """The tokenizer a checkpoint recorded (tokenizer.state())."""
    kind = state['kind']
    if kind == 'bytes':
        return ByteTokenizer()
    if kind == 'layout':
        return LayoutTokenizer(state['classes'], state['vocab_size'], state['max_objects'])
    return WordPieceTokenizer(**{k: v for k, v in state.items() if k != 'kind'})
