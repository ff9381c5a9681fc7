"""Batched generation for evaluation: greedy decoding on a preallocated KV cache, and beam search.

Prompts are token-id lists, left-padded per batch (positions count real tokens only) and sorted by
length so that a batch holds prompts of similar length. Greedy decoding uses its own loop
(`generate_greedy`): the cache is written into a buffer allocated once instead of being concatenated
at every step, and rows that have produced EOS leave the batch. Beam search uses `transformers`'
`generate`. On a CPU, a float32 model runs both with its linear layers packed for oneDNN
(`hyplora.harness.packed_linear`) and attends in decoding steps through `hyplora.harness.decode_attention`'s kernel.
"""

import inspect

import torch
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer

from hyplora.errors import InputError
from hyplora.harness.decode_attention import decoding_kernel

COMPACT_FRACTION = 0.125
"""`generate_greedy` drops finished rows once they are this fraction of the batch (copying the cache costs)."""


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` writing into a buffer of `capacity` positions allocated once.

    `DynamicLayer.update` concatenates, which copies the whole cache at every decoding step; here
    `keys` / `values` are views of the filled part of the buffer.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states, value_states):
        super().lazy_initialization(key_states, value_states)
        batch, heads, _, dim = key_states.shape
        self.key_buffer = key_states.new_empty((batch, heads, self.capacity, dim))
        self.value_buffer = value_states.new_empty(
            (batch, value_states.shape[1], self.capacity, value_states.shape[-1])
        )

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices):
        """Keep the rows `indices` (ascending): their filled positions move to the buffer's first rows, in place.

        Only the filled part is copied (not the whole capacity) and nothing of the capacity is reallocated.
        """
        if self.is_initialized:
            rows, filled = len(indices), slice(0, self.length)
            for buffer in (self.key_buffer, self.value_buffer):
                buffer[:rows, :, filled] = buffer[indices, :, filled]
            self.key_buffer, self.value_buffer = self.key_buffer[:rows], self.value_buffer[:rows]
            self.keys, self.values = self.key_buffer[:, :, filled], self.value_buffer[:, :, filled]

    def reorder_cache(self, beam_idx):
        """Beam search: row i takes the filled positions of row `beam_idx[i]`, in place.

        Only the rows whose source is another row are copied (`DynamicLayer` gathers every row and, at the next
        step, concatenates the whole cache again).
        """
        if self.is_initialized and self.length:
            moved = (beam_idx != torch.arange(len(beam_idx), device=beam_idx.device)).nonzero().flatten()
            if len(moved):
                filled = slice(0, self.length)
                for buffer in (self.key_buffer, self.value_buffer):
                    buffer[moved, :, filled] = buffer[beam_idx[moved], :, filled]  # the source is read first


def new_cache(model, capacity: int) -> DynamicCache:
    """A `DynamicCache` for `model` whose full-attention layers are `PreallocatedLayer`s (sliding ones stay as they are)."""
    cache = DynamicCache(config=base_model(model).config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def base_model(model):
    """The transformers model under a `PeftModel` (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _forward_kwargs(model) -> tuple[str, bool]:
    """The cache keyword of the model's forward (`cache`, or `past_key_values` before transformers renamed it),
    and whether it accepts `logits_to_keep`."""
    parameters = inspect.signature(type(base_model(model)).forward).parameters
    return ("cache" if "cache" in parameters else "past_key_values"), "logits_to_keep" in parameters


def eos_token_ids(model, tokenizer) -> set[int]:
    """The tokenizer's EOS id plus the model's `generation_config.eos_token_id` (an int or a list)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.discard(None)
    if not ids:
        raise InputError("the tokenizer and the model define no EOS token: generation could never stop early")
    return ids


def _left_padded(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    end = next((i + 1 for i, token in enumerate(tokens) if token in eos_ids), len(tokens))
    return tokens[:end]


@torch.inference_mode()
def generate_greedy(
    model, prompts: list[list[int]], *, max_new_tokens: int, eos_ids: set[int], pad_id: int
) -> list[list[int]]:
    """Greedy decoding of one batch; returns each row's new tokens, up to and including its first EOS.

    1. Prefill the left-padded prompts (positions count real tokens only) into a preallocated cache.
    2. Each step appends the argmax token of every active row; a row stops at EOS.
    3. Finished rows leave the batch (cache, mask and positions are row-selected) once they make up
       `COMPACT_FRACTION` of it, and the loop ends when no row is left.
    """
    cache_kwarg, has_logits_to_keep = _forward_kwargs(model)
    input_ids, attention_mask = _left_padded(prompts, pad_id, _device(model))
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    cache = new_cache(model, capacity=input_ids.shape[1] + max_new_tokens)
    extra = {"logits_to_keep": 1} if has_logits_to_keep else {}
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        **{cache_kwarg: cache},
        **extra,
    ).logits[:, -1]
    positions = positions[:, -1:]
    rows = list(range(len(prompts)))  # the prompt index of each row still in the batch
    running = [True] * len(rows)
    generated = [[] for _ in prompts]
    for step in range(max_new_tokens):
        next_tokens = logits.max(-1).indices  # the first maximal index, as argmax; about 2x faster on a CPU
        for i, token in enumerate(next_tokens.tolist()):
            if running[i]:
                generated[rows[i]].append(token)
                running[i] = token not in eos_ids
        if step + 1 == max_new_tokens or not any(running):
            break
        if running.count(False) >= max(1, COMPACT_FRACTION * len(rows)):
            keep = torch.tensor([i for i, alive in enumerate(running) if alive], device=attention_mask.device)
            cache.batch_select_indices(keep)
            attention_mask, positions, next_tokens = attention_mask[keep], positions[keep], next_tokens[keep]
            rows = [rows[i] for i in keep.tolist()]
            running = [True] * len(rows)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=1)
        positions = positions + 1
        logits = model(
            input_ids=next_tokens[:, None],
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            **{cache_kwarg: cache},
        ).logits[:, -1]
    return generated


@torch.inference_mode()
def generate_beam(
    model, prompts: list[list[int]], *, max_new_tokens: int, num_beams: int, eos_ids: set[int], pad_id: int
) -> list[list[int]]:
    """Beam search of one left-padded batch with `transformers`' `generate` (no sampling, as LLM-Adapters), on a
    preallocated cache (rows reordered in place, nothing concatenated).

    Every knob of beam search is set to `GenerationConfig`'s defaults explicitly: `generate` would fill
    unset ones from the model's own `generation_config` (a repetition penalty, say), which LLM-Adapters'
    fresh `GenerationConfig` did not do.
    """
    input_ids, attention_mask = _left_padded(prompts, pad_id, _device(model))
    config = GenerationConfig(
        num_beams=num_beams,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        min_length=0,
        early_stopping=False,
        length_penalty=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_return_sequences=1,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad_id,
    )
    cache_kwarg, _ = _forward_kwargs(model)
    cache = new_cache(model, capacity=input_ids.shape[1] + max_new_tokens)
    sequences = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **{cache_kwarg: cache}
    )
    return [_until_eos(row, eos_ids) for row in sequences[:, input_ids.shape[1] :].tolist()]


def generate_batched(
    model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    num_beams: int,
    batch_size: int,
    eos_ids: set[int],
    pad_id: int,
    on_batch=None,
) -> list[list[int]]:
    """Generate for every prompt in batches of similar length; results come back in prompt order.

    Prompts are sorted by token count (longest first, so memory peaks at once) and cut into
    batches of `batch_size`. `on_batch(indices, outputs)` is called after each batch.
    """
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[list[int] | None] = [None] * len(prompts)
    with decoding_kernel(base_model(model)):
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = [prompts[i] for i in indices]
            if num_beams == 1:
                new = generate_greedy(model, batch, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id)
            else:
                new = generate_beam(
                    model, batch, max_new_tokens=max_new_tokens, num_beams=num_beams, eos_ids=eos_ids, pad_id=pad_id
                )
            for i, tokens in zip(indices, new):
                outputs[i] = tokens
            if on_batch is not None:
                on_batch(indices, new)
    return outputs


def pad_token_id(tokenizer, eos_ids: set[int]) -> int:
    """The id left padding uses: the tokenizer's pad token, else the smallest EOS id (masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
