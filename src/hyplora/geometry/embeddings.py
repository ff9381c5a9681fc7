"""What the analysis reads from a model: input-embedding vectors and per-token hidden-state norms.

Input embeddings are taken as the model's embedding module returns them, so a model that scales
them (Gemma multiplies by :math:`\\sqrt{d}`) is measured as its first layer sees them.
"""

from collections.abc import Iterable

import numpy as np
import torch

from hyplora.errors import InputError


def input_embedding_layer(model) -> torch.nn.Embedding:
    """The model's input-embedding module.

    Raises:
        InputError: the model has no ``nn.Embedding`` input embeddings.
    """
    getter = getattr(model, "get_input_embeddings", None)
    layer = getter() if callable(getter) else None
    if not isinstance(layer, torch.nn.Embedding):
        raise InputError(
            f"model {type(model).__name__} has no input embeddings (get_input_embeddings() gave {type(layer).__name__})"
        )
    return layer


@torch.no_grad()
def token_embeddings(model, token_ids, *, batch_size: int = 8192) -> torch.Tensor:
    """Input embeddings ``(n, d)`` in float32 of ``token_ids`` ``(n,)``."""
    layer = input_embedding_layer(model)
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64))
    if ids.numel() and (ids.min() < 0 or ids.max() >= layer.num_embeddings):
        raise InputError(f"token ids out of range for an embedding table of {layer.num_embeddings} rows")
    chunks = [
        layer(ids[i : i + batch_size].to(layer.weight.device)).float().cpu() for i in range(0, len(ids), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, layer.embedding_dim)


def token_norms(model, token_ids) -> np.ndarray:
    """Euclidean norms of the input embeddings of ``token_ids``."""
    return torch.linalg.vector_norm(token_embeddings(model, token_ids), dim=-1).numpy()


def check_hidden_layer(model, layer: int) -> None:
    """Raise InputError unless ``layer`` is in ``0..num_hidden_layers`` (0 = the embeddings)."""
    num_layers = model.config.get_text_config().num_hidden_layers
    if not 0 <= layer <= num_layers:
        raise InputError(f"--hidden-layer {layer}: the model has hidden states 0..{num_layers}")


@torch.no_grad()
def hidden_state_norms(
    model, tokenizer, texts: Iterable[str], layer: int, *, max_tokens: int = 1500
) -> dict[int, float]:
    """Mean norm of the hidden state after ``layer`` blocks (0 = embeddings) per token id, over its occurrences in ``texts``.

    Each text is encoded alone, without special tokens, and cut to ``max_tokens``. Its first
    position is not counted (the attention sink, see the comment in the loop). Wrap ``texts`` in
    ``tqdm`` for progress.

    Raises:
        InputError: ``layer`` is outside ``0..num_hidden_layers``.
    """
    check_hidden_layer(model, layer)
    decoder = model.get_decoder()  # the transformer without the LM head, whose logits are not needed
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    device = next(model.parameters()).device
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_tokens, return_tensors="pt")[
            "input_ids"
        ]
        if ids.numel() == 0:
            continue
        hidden = decoder(input_ids=ids.to(device), output_hidden_states=True).hidden_states[layer][0]
        # position 0 is left out: the first token of a sequence is the attention sink, whose hidden
        # state has a "massive activation" (norms ~1e4 in SmolLM2 at layer 15, vs ~1e2 elsewhere)
        for token, norm in zip(
            ids[0, 1:].tolist(), torch.linalg.vector_norm(hidden[1:].float(), dim=-1).tolist(), strict=True
        ):
            sums[token] = sums.get(token, 0.0) + norm
            counts[token] = counts.get(token, 0) + 1
    return {token: sums[token] / counts[token] for token in sums}
