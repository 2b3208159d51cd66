"""The generated tiny GGUF: structure, tokenizer, and the cache."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from modelberth.tinymodel import default_model_path, ensure_tiny_model, write_tiny_gguf


def _field(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    if field.types and field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value).decode()
    return value.tolist()[0]


def test_written_model_is_a_small_llama(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf")
    assert 100_000 < path.stat().st_size < 2_000_000
    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == 2
    assert _field(reader, "llama.embedding_length") == 64
    assert _field(reader, "llama.context_length") == 512
    assert "<|im_start|>" in str(_field(reader, "tokenizer.chat_template"))
    names = {tensor.name for tensor in reader.tensors}
    assert {"token_embd.weight", "output.weight", "blk.1.ffn_down.weight"} <= names


def test_only_printable_tokens_are_normal(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(write_tiny_gguf(tmp_path / "m.gguf"))
    tokens_field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(tokens_field.parts[i]).decode() for i in tokens_field.data]
    types_field = reader.fields["tokenizer.ggml.token_type"]
    types = dict(zip(tokens, (int(types_field.parts[i][0]) for i in types_field.data), strict=True))
    assert types["a"] == types["Ġ"] == types["~"] == gguf.TokenType.NORMAL  # "Ġ" is the space byte
    assert types["Ċ"] == types["Ã"] == gguf.TokenType.UNUSED  # "\n" and 0xC3
    assert types["<|im_start|>"] == types["<|im_end|>"] == gguf.TokenType.CONTROL
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    assert isinstance(eos, int)
    assert tokens[eos] == "<|im_end|>"


def test_ensure_writes_once_and_reuses(tmp_path: Path) -> None:
    path = ensure_tiny_model(tmp_path / "cache" / "tiny.gguf")
    first = path.stat().st_mtime_ns
    assert ensure_tiny_model(path) == path
    assert path.stat().st_mtime_ns == first
    assert not list(path.parent.glob("*.tmp"))


def test_default_path_honours_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBERTH_CACHE_DIR", str(tmp_path))
    assert default_model_path() == tmp_path / "tiny-llama.gguf"
