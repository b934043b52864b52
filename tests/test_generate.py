import numpy as np

from finecaption_ros.model.generate import greedy_decode, prefix_trie

EOS, PAD, VOCAB = 2, 0, 8


class FixedPreferences:
    """A decoder whose logits are the same every step: it prefers tokens in the order of `preference`."""

    def __init__(self, preference: list[int]):
        self.logits = np.full(VOCAB, -10.0, dtype=np.float32)
        for rank, token in enumerate(preference):
            self.logits[token] = 10.0 - rank

    def prefill(self, visual, prompt_ids, attention, positions):
        return np.tile(self.logits, (len(prompt_ids), 1))

    def step(self, token_ids, attention, positions):
        return np.tile(self.logits, (len(token_ids), 1))


def test_a_constrained_sequence_takes_the_likeliest_allowed_answer_and_others_decode_freely():
    session = FixedPreferences([7, 6, 5, EOS, 4, 3])  # free decoding repeats 7 until the budget ends
    trie = prefix_trie([[3, 4], [3, 6], [5]], EOS)
    generation = greedy_decode(session, None, 0, [[1], [1], [1]], eos_id=EOS, pad_id=PAD, max_new_tokens=4,
                               allowed=[trie, None, prefix_trie([[3, 4], [3, 6, 4]], EOS)])
    # 5 beats 3 at the first step; then EOS is all [5] allows. The free sequence is untouched.
    assert generation.token_ids == [[5], [7, 7, 7, 7], [3, 6, 4]]
    # Confidences are the model's own probabilities of what was chosen, so the forced answers read as unsure.
    assert generation.confidences[1] > 0.5 > max(generation.confidences[0], generation.confidences[2])


def test_prefix_trie_ends_every_answer_in_eos_and_merges_shared_prefixes():
    assert prefix_trie([[3, 4], [3, 6], [3, 4]], EOS) == {3: {4: {EOS: {}}, 6: {EOS: {}}}}
    assert prefix_trie([], EOS) == {}
