"""What a llama.cpp model will need, read from its GGUF header: weights + KV cache + overhead."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelberth.config import ModelSpec

MB = 1024 * 1024
# Bytes per element of the KV cache for llama.cpp's --cache-type-k/-v values.
_CACHE_BYTES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
    "iq4_nl": 18 / 32,
}


@dataclass(frozen=True, slots=True)
class Estimate:
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    context: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes


@dataclass(frozen=True, slots=True)
class GgufShape:
    weights_bytes: int
    layers: int
    trained_context: int
    kv_heads: int
    key_length: int
    value_length: int


def _value(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    part = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(part).decode()
    values = [field.parts[i].tolist()[0] for i in field.data]
    return values[0] if len(values) == 1 else max(values)  # per-layer arrays: the largest


@functools.lru_cache(maxsize=64)
def _read_shape(path: str, _mtime: float) -> GgufShape:
    import gguf

    reader = gguf.GGUFReader(path)
    arch = _value(reader, "general.architecture")
    heads = int(_value(reader, f"{arch}.attention.head_count") or 1)
    embd = int(_value(reader, f"{arch}.embedding_length") or 0)
    head_dim = embd // heads if heads else 0
    return GgufShape(
        weights_bytes=sum(int(tensor.n_bytes) for tensor in reader.tensors),
        layers=int(_value(reader, f"{arch}.block_count") or 0),
        trained_context=int(_value(reader, f"{arch}.context_length") or 0),
        kv_heads=int(_value(reader, f"{arch}.attention.head_count_kv") or heads),
        key_length=int(_value(reader, f"{arch}.attention.key_length") or head_dim),
        value_length=int(_value(reader, f"{arch}.attention.value_length") or head_dim),
    )


def gguf_shape(path: Path) -> GgufShape:
    return _read_shape(str(path), path.stat().st_mtime)


def estimate_gguf(
    path: Path,
    context: int | None = None,
    cache_k: str = "f16",
    cache_v: str = "f16",
    overhead_mb: int = 0,
) -> Estimate:
    """Weights as the tensors' bytes; the KV cache as, per token of context, every layer's
    K and V for each KV head (layers x KV heads x (key length x K's bytes + value length x
    V's bytes)); the context the model was trained for unless one is given; an unknown
    cache type counted as f16.

    modelberth's tiny GGUF has 2 layers, 4 KV heads and keys and values of 16: at f16,
    2 x 4 x (16 x 2 + 16 x 2) = 512 bytes a token; with q8_0 values (34 bytes per 32)
    2 x 4 x (16 x 2 + 17) = 392.

    >>> import tempfile
    >>> from modelberth.tinymodel import write_tiny_gguf
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = write_tiny_gguf(Path(tmp.name) / "tiny.gguf", context_length=512)
    >>> estimate_gguf(path, context=256).kv_cache_bytes
    131072
    >>> estimate = estimate_gguf(path, context=256, cache_v="q8_0", overhead_mb=10)
    >>> estimate.kv_cache_bytes, estimate.overhead_bytes
    (100352, 10485760)
    >>> estimate.total_bytes - estimate.weights_bytes == 100352 + 10 * MB
    True
    >>> estimate_gguf(path).context, estimate_gguf(path, cache_k="nonsense").kv_cache_bytes
    (512, 262144)
    >>> estimate_gguf(Path(tmp.name) / "missing.gguf")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    FileNotFoundError: [Errno 2] No such file or directory: '...missing.gguf'
    >>> tmp.cleanup()
    """
    shape = gguf_shape(path)
    ctx = context or shape.trained_context
    per_token = (
        shape.layers
        * shape.kv_heads
        * (
            shape.key_length * _CACHE_BYTES.get(cache_k, 2.0)
            + shape.value_length * _CACHE_BYTES.get(cache_v, 2.0)
        )
    )
    return Estimate(shape.weights_bytes, int(per_token * ctx), overhead_mb * MB, ctx)


def _option(argv: list[str], env: dict[str, str], flags: tuple[str, ...], var: str) -> str | None:
    """A llama-server option's value as llama.cpp reads it: `-c N` or `--ctx-size=N` on the
    command line, else its LLAMA_ARG_ variable (the command line wins, as in llama.cpp).

    >>> ctx = ("-c", "--ctx-size")
    >>> _option(["llama-server", "-c", "4096"], {}, ctx, "LLAMA_ARG_CTX_SIZE")
    '4096'
    >>> _option(["llama-server", "--ctx-size=8192"], {"LLAMA_ARG_CTX_SIZE": "2048"}, ctx,
    ...         "LLAMA_ARG_CTX_SIZE")
    '8192'
    >>> _option(["llama-server"], {"LLAMA_ARG_CTX_SIZE": "2048"}, ctx, "LLAMA_ARG_CTX_SIZE")
    '2048'
    >>> _option(["llama-server", "-c"], {}, ctx, "LLAMA_ARG_CTX_SIZE") is None
    True
    """
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return env.get(var)


def estimate_spec(spec: ModelSpec, overhead_mb: int) -> Estimate | None:
    """The estimate for a model whose command or model_path names a local GGUF, else None."""
    argv = spec.argv(0)
    env = {**os.environ, **spec.environment(0)}
    model = _option(argv, env, ("-m", "--model"), "LLAMA_ARG_MODEL") or spec.model_path
    if not model or not model.endswith(".gguf") or not Path(model).is_file():
        return None
    context = _option(argv, env, ("-c", "--ctx-size"), "LLAMA_ARG_CTX_SIZE")
    cache_k = _option(argv, env, ("-ctk", "--cache-type-k"), "LLAMA_ARG_CACHE_TYPE_K") or "f16"
    cache_v = _option(argv, env, ("-ctv", "--cache-type-v"), "LLAMA_ARG_CACHE_TYPE_V") or "f16"
    try:
        return estimate_gguf(
            Path(model),
            int(context) if context and context.isdigit() else None,
            cache_k,
            cache_v,
            overhead_mb,
        )
    except (OSError, ValueError, KeyError, IndexError):
        return None
