"""specjax.fast_tokenizer (a plain `tokenizers` directory loaded without transformers' tokenizer classes)
against transformers' AutoTokenizer on the embedded default tokenizer: ids, chat prompts, decoding, EOS."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from specjax import default_model, fast_tokenizer, tokenizer

TEXTS = [
    "What is speculative decoding?",
    "  leading and trailing spaces  ",
    "Tabs\tand\nnew lines\n\n  indented",
    "Unicode: naïve café, 日本語, emoji 🚀, ß and Ω",
    "Special tokens in text: <|im_start|>user\nhi<|im_end|> and <|endoftext|>",
    "def f(x):\n    return x ** 2  # code\n",
    "Numbers 1234567890 3.14159 -42 1e-5",
    "",
    "a" * 300,
]


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoTokenizer

    fast = tokenizer.load_tokenizer(default_model.TOKENIZER_DIR)
    assert isinstance(fast.hf, fast_tokenizer.FastTokenizer)
    ref = tokenizer.Tokenizer(AutoTokenizer.from_pretrained(str(default_model.TOKENIZER_DIR)))
    return fast, ref


def test_ids_and_eos_equal_transformers(pair):
    fast, ref = pair
    assert fast.eos_token_ids == ref.eos_token_ids
    assert fast.hf.get_vocab() == ref.hf.get_vocab()
    for text in TEXTS:
        for special in (True, False):
            assert fast.hf(text, add_special_tokens=special)["input_ids"] == \
                list(ref.hf(text, add_special_tokens=special)["input_ids"]), (text, special)
        assert fast.encode(text) == ref.encode(text)


def test_chat_prompts_equal_transformers(pair):
    fast, ref = pair
    for text in TEXTS:
        assert fast.encode(text, chat=True) == ref.encode(text, chat=True), text
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Translate: Guten Morgen"}]
    for msgs in (turns, turns[1:], turns[:1]):
        for gen in (True, False):
            assert fast.hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == \
                ref.hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def test_decoding_equals_transformers(pair):
    fast, ref = pair
    rng = np.random.default_rng(0)
    seqs = [fast.encode(t, chat=True) for t in TEXTS]
    seqs += [rng.integers(0, 49152, n).tolist() for n in (1, 7, 64)]
    seqs += [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]  # the special tokens
    for ids in seqs:
        for skip in (True, False):
            assert fast.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)


def test_other_tokenizers_go_to_transformers(tmp_path):
    """An option with which transformers rewrites the backend, another class, or named template variants:
    fast_tokenizer declines and load_tokenizer uses AutoTokenizer."""
    cfg = json.loads((default_model.TOKENIZER_DIR / "tokenizer_config.json").read_text())
    extra = {"49152": {"content": "<tool>", "special": True}}  # a token tokenizer.json lacks
    respecial = {"0": {"content": "<|endoftext|>", "special": False}}  # re-flagged
    for i, change in enumerate([{"add_bos_token": True}, {"tokenizer_class": "LlamaTokenizerFast"},
                                {"chat_template": [{"name": "default", "template": "x"}]},
                                {"additional_special_tokens": ["<|im_start|>"]},
                                {"added_tokens_decoder": extra}, {"added_tokens_decoder": respecial}]):
        d = tmp_path / str(i)
        shutil.copytree(default_model.TOKENIZER_DIR, d)
        if "chat_template" in change:
            (d / "chat_template.jinja").unlink()
        (d / "tokenizer_config.json").write_text(json.dumps({**cfg, **change}))
        assert fast_tokenizer.load(d) is None, change
    assert fast_tokenizer.load(tmp_path / "missing") is None
    # the same declarations as tokenizer.json's own added tokens keep the fast path
    d = tmp_path / "same"
    shutil.copytree(default_model.TOKENIZER_DIR, d)
    same = {"0": {"content": "<|endoftext|>", "special": True}, "2": {"content": "<|im_end|>", "special": True}}
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "added_tokens_decoder": same}))
    assert fast_tokenizer.load(d) is not None


def test_saved_copy_loads_the_same(tmp_path, pair):
    fast, _ = pair
    fast.save_pretrained(tmp_path)
    again = tokenizer.load_tokenizer(tmp_path)
    assert isinstance(again.hf, fast_tokenizer.FastTokenizer)
    assert again.encode(TEXTS[0], chat=True) == fast.encode(TEXTS[0], chat=True)


def test_default_tokenizer_imports_no_transformers_tokenizer():
    """Loading and encoding (no chat) never imports transformers: the ~2 s this module exists to save."""
    code = ("import sys; from specjax import tokenizer, default_model; "
            "t = tokenizer.load_tokenizer(default_model.TOKENIZER_DIR); t.encode('hi'); t.decode([1, 2]); "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
