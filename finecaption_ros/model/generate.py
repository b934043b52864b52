"""Greedy, batched, KV-cached decoding: one loop for every backend.

A backend supplies a `DecoderSession` (prefill once, then one token per step, cache kept inside); the loop here
does the rest, so the torch, ONNX Runtime and TensorRT paths produce the same tokens by construction.
Sequence layout per region: [visual tokens][left-padded prompt] -> generated tokens. Padding sits between the
visual tokens and the prompt, is masked out, and positions skip it, so a region decodes the same alone or batched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from transformers import DynamicCache


class DecoderSession(Protocol):
    def prefill(self, visual, prompt_ids: np.ndarray, attention: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Runs the whole prefix; returns the last position's logits (R, V) as float32 numpy."""

    def step(self, token_ids: np.ndarray, attention: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Feeds one token per sequence (R,1); `attention` covers the cache plus this token."""


@dataclass
class Generation:
    token_ids: list[list[int]]
    confidences: list[float]  # mean probability of the chosen tokens, EOS included


def prefix_trie(sequences: list[list[int]], eos_id: int) -> dict:
    """The token sequences a constrained decode may produce, each ending in EOS, as nested {token: subtree}."""
    root: dict = {}
    for sequence in sequences:
        node = root
        for token in list(sequence) + [eos_id]:
            node = node.setdefault(int(token), {})
    return root


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    length = max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for i, seq in enumerate(sequences):
        ids[i, length - len(seq):] = seq
        mask[i, length - len(seq):] = 1
    return ids, mask


def greedy_decode(session: DecoderSession, visual, num_visual: int, prompts: list[list[int]], eos_id: int,
                  pad_id: int, max_new_tokens: int, allowed: list[dict | None] | None = None) -> Generation:
    """`allowed[i]`, where given, is a `prefix_trie` of the only answers sequence i may give: each step takes the
    likeliest token among the trie's continuations. Confidences stay the model's own (unconstrained) probabilities,
    so a forced answer reads as the unsure one it is."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    count = len(prompts)
    attention = np.concatenate([np.ones((count, num_visual), dtype=np.int64), prompt_mask], axis=1)
    positions = np.clip(np.cumsum(attention, axis=1) - 1, 0, None)
    logits = session.prefill(visual, prompt_ids, attention, positions)
    next_position = positions[:, -1:] + 1
    finished = np.zeros(count, dtype=bool)
    tokens: list[list[int]] = [[] for _ in range(count)]
    probability_sums = np.zeros(count)
    nodes = list(allowed) if allowed is not None else [None] * count
    for step in range(max_new_tokens):
        shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        chosen = probs.argmax(axis=1)
        for i in np.flatnonzero(~finished):
            if nodes[i] is not None:
                options = np.fromiter(nodes[i], dtype=np.int64) if nodes[i] else np.array([eos_id])
                chosen[i] = options[probs[i, options].argmax()]
                nodes[i] = nodes[i].get(int(chosen[i]), {})
            tokens[i].append(int(chosen[i]))
            probability_sums[i] += probs[i, chosen[i]]
        finished |= chosen == eos_id
        if finished.all() or step == max_new_tokens - 1:
            break
        feed = np.where(finished, pad_id, chosen)[:, None].astype(np.int64)
        attention = np.concatenate([attention, np.ones((count, 1), dtype=np.int64)], axis=1)
        logits = session.step(feed, attention, next_position)
        next_position = next_position + 1
    confidences = [float(probability_sums[i] / max(1, len(tokens[i]))) for i in range(count)]
    stripped = [t[:-1] if t and t[-1] == eos_id else t for t in tokens]
    return Generation(stripped, confidences)


class TorchDecoderSession:
    """The decoder of a `FineCaptionModel` in eager torch, with transformers' dynamic KV cache."""

    def __init__(self, model):
        self.model = model
        self.cache = None

    @torch.inference_mode()
    def prefill(self, visual, prompt_ids, attention, positions):
        embeds = torch.cat([visual, self.model.embed_tokens(torch.from_numpy(prompt_ids))], dim=1)
        self.cache = DynamicCache()
        out = self.model.decoder(inputs_embeds=embeds, attention_mask=torch.from_numpy(attention),
                                 position_ids=torch.from_numpy(positions), cache=self.cache,
                                 use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float().numpy()

    @torch.inference_mode()
    def step(self, token_ids, attention, positions):
        out = self.model.decoder(input_ids=torch.from_numpy(token_ids), attention_mask=torch.from_numpy(attention),
                                 position_ids=torch.from_numpy(positions), cache=self.cache,
                                 use_cache=True)
        return out.logits[:, -1].float().numpy()
