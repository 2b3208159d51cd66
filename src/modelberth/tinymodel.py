"""A tiny llama-architecture GGUF with random weights, for the demo and the tests.

It is real enough for llama-server (chat template, byte-level BPE tokenizer, embeddings) and
tiny (~0.5 MB, written in well under a second, healthy in ~25 ms). Random weights would emit
lone bytes >= 0x80, which are invalid UTF-8 and make llama-server's chat endpoint fail, so two
defences keep the generated text printable ASCII:

- the output layer is biased: the embeddings carry a large constant in dimension 0, which
  survives the final RMS norm, and output.weight's column 0 rewards printable tokens and punishes
  every other one by hundreds of logits (still negligible at temperature 50 with no top-k/p);
- the byte tokens outside printable ASCII are typed UNUSED, which llama.cpp detokenizes to
  nothing, so even if one were sampled it would add no bytes. Tokenizing a prompt still finds
  them (BPE looks tokens up by text, whatever their type), so any UTF-8 input works.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

N_EMBD = 64
N_HEAD = 4
N_FF = 128
N_LAYER = 2
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MERGES = ("t h", "e r", "i n", "a n", "o n", "Ġ t", "Ġ a", "r e", "e s", "o r")
# gguf token types (gguf.TokenType)
_NORMAL, _CONTROL, _UNUSED = 1, 3, 5


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _vocab() -> tuple[list[str], list[int], np.ndarray]:
    """Tokens, their types, and which of them may be generated (printable ASCII only)."""
    byte_map = _byte_to_unicode()
    tokens = [byte_map[b] for b in range(256)]
    allowed = [0x20 <= b <= 0x7E for b in range(256)]
    types = [_NORMAL if ok else _UNUSED for ok in allowed]
    for merge in MERGES:
        tokens.append(merge.replace(" ", ""))
        types.append(_NORMAL)
        allowed.append(True)
    for special in SPECIAL:
        tokens.append(special)
        types.append(_CONTROL)
        allowed.append(False)
    return tokens, types, np.array(allowed)


def _tensors(rng: np.random.Generator, allowed: np.ndarray) -> dict[str, np.ndarray]:
    n_vocab = len(allowed)

    def rand(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    embd = rand(n_vocab, N_EMBD, scale=0.5)
    embd[:, 0] = 50.0  # dominates every hidden state, so output column 0 acts as a bias
    output = rand(n_vocab, N_EMBD, scale=1.0)
    # hidden dim 0 is ~8 after the final norm: disallowed tokens trail by ~800 logits
    output[:, 0] = np.where(allowed, 0.5, -100.0)
    tensors = {
        "token_embd.weight": embd,
        "output_norm.weight": np.ones(N_EMBD, dtype=np.float32),
        "output.weight": output,
    }
    for i in range(N_LAYER):
        block = f"blk.{i}"
        tensors |= {
            f"{block}.attn_norm.weight": np.ones(N_EMBD, dtype=np.float32),
            f"{block}.attn_q.weight": rand(N_EMBD, N_EMBD),
            f"{block}.attn_k.weight": rand(N_EMBD, N_EMBD),
            f"{block}.attn_v.weight": rand(N_EMBD, N_EMBD),
            f"{block}.attn_output.weight": rand(N_EMBD, N_EMBD),
            f"{block}.ffn_norm.weight": np.ones(N_EMBD, dtype=np.float32),
            f"{block}.ffn_gate.weight": rand(N_FF, N_EMBD),
            f"{block}.ffn_up.weight": rand(N_FF, N_EMBD),
            f"{block}.ffn_down.weight": rand(N_EMBD, N_FF),
        }
    return tensors


def write_tiny_gguf(path: Path, *, seed: int = 0, context_length: int = 512) -> Path:
    import gguf

    tokens, types, allowed = _vocab()
    writer: Any = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("modelberth-tiny")
    writer.add_context_length(context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_pooling_type(gguf.PoolingType.MEAN)  # for --embeddings without --pooling
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(list(MERGES))
    eos = tokens.index("<|im_end|>")
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in _tensors(np.random.default_rng(seed), allowed).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def default_model_path() -> Path:
    cache = os.environ.get("MODELBERTH_CACHE_DIR")
    base = Path(cache) if cache else Path.home() / ".cache" / "modelberth"
    return base / "tiny-llama.gguf"


def ensure_tiny_model(path: Path | None = None) -> Path:
    """The tiny model at `path` (default: the cache), written once and then reused."""
    target = path or default_model_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    try:
        write_tiny_gguf(Path(tmp))
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
