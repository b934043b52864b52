import math

import pytest

from finecaption_ros import metrics
from finecaption_ros.metrics import bleu4, caption_scores, cider_d, meteor, rouge_l, tokenize

CORPUS = [
    "a small red striped circle at the top left",
    "a large blue solid square in the center",
    "a medium green checkered star at the bottom",
    "two objects: a yellow cross and a white diamond",
    "a purple triangle next to an orange circle",
]
REFS = [[c] for c in CORPUS]


def test_tokenize_splits_punctuation_and_lowercases():
    assert tokenize("A red, Shiny ball. Really?!") == ["a", "red", ",", "shiny", "ball", ".", "really", "?", "!"]


def test_identical_and_disjoint():
    assert bleu4(REFS, CORPUS) == pytest.approx(1.0)
    assert rouge_l(REFS, CORPUS) == pytest.approx(1.0)
    disjoint = ["zebra " * (i + 3) for i in range(len(CORPUS))]
    assert bleu4(REFS, disjoint) == 0.0
    assert rouge_l(REFS, disjoint) == 0.0
    assert cider_d(REFS, disjoint) == 0.0


def test_bleu_hand_computed():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat":
    # 1-grams 5/6 ("the" clipped to 1), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3, equal lengths -> no penalty
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu4([["the cat sat on a mat"]], ["the cat sat on the mat"]) == pytest.approx(expected)


def test_bleu_brevity_penalty_uses_closest_reference():
    # all precisions are 1; 5 hypothesis tokens against the closest reference of 6 -> exp(1 - 6/5)
    refs = [["the cat sat on the mat", "the cat sat on the mat in the sunny garden today"]]
    assert bleu4(refs, ["the cat sat on the"]) == pytest.approx(math.exp(1 - 6 / 5))


def test_bleu_is_corpus_level_not_mean_of_sentences():
    # item 1 alone: 4/4, 3/3, 2/2, 1/1; item 2 ("e f x h") alone: 3/4, 1/3 ("e f"), 0/2, 0/1 -> sentence BLEU 0.
    # corpus sums counts before dividing: 7/8, 4/6, 2/4, 1/2
    refs = [["a b c d"], ["e f g h"]]
    hyps = ["a b c d", "e f x h"]
    expected = ((4 + 3) / 8 * (3 + 1) / 6 * (2 + 0) / 4 * (1 + 0) / 2) ** 0.25
    assert bleu4(refs, hyps) == pytest.approx(expected)


def test_bleu_clips_by_max_count_over_references():
    # "the" appears 2 and 3 times in the references: four hypothesis "the"s count 3 times (max, not sum = 5)
    refs = [["the the cat sat", "the cat the sat the"]]
    hyp = ["the the the the cat sat"]
    # 1-grams: the min(4, 3) = 3, cat 1, sat 1 -> 5/6
    # 2-grams of hyp: the the x3, the cat, cat sat; refs have "the the" once, "the cat", "cat sat" -> 3/5
    # 3-grams: the the the x2, the the cat, the cat sat -> "the the cat", "the cat sat" -> 2/4
    # 4-grams: the the the the, the the the cat, the the cat sat -> "the the cat sat" -> 1/3
    # lengths: 6 vs refs 4 and 5 -> closest 5, no penalty
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu4(refs, hyp) == pytest.approx(expected)


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat on mat") = 4: P = 4/4, R = 4/6, F = (1+b^2)PR / (R + b^2 P), b = 1.2
    p, r, b2 = 1.0, 4 / 6, 1.2**2
    expected = (1 + b2) * p * r / (r + b2 * p)
    assert expected == pytest.approx(0.772152, abs=1e-6)
    assert rouge_l([["the cat sat on the mat"]], ["the cat on mat"]) == pytest.approx(expected)


def test_rouge_l_maximises_precision_and_recall_separately_and_averages_items():
    # ref A gives P = 2/3, R = 2/2; ref B gives P = 3/3, R = 3/6; COCO combines max P = 1 with max R = 1
    refs = [["a b", "a x b y c z"], ["q"]]
    hyps = ["a b c", "w"]
    assert rouge_l(refs, hyps) == pytest.approx((1.0 + 0.0) / 2)


def test_cider_d_relative_behaviour():
    perfect = cider_d(REFS, CORPUS)
    assert perfect > 1.0
    assert perfect <= 10.0 + 1e-9  # cosine similarity per n is at most 1, times 10
    one_wrong = list(CORPUS)
    one_wrong[0] = "a small blue striped circle at the top left"
    assert 0 < cider_d(REFS, one_wrong) < perfect
    shorter = list(CORPUS)
    shorter[1] = "a large blue solid square"
    assert cider_d(REFS, shorter) < perfect


def test_cider_d_clips_repetition_and_penalises_length():
    base = cider_d(REFS, CORPUS)
    repeated = list(CORPUS)
    repeated[2] = "a medium green checkered star star star star at the bottom"
    assert cider_d(REFS, repeated) < base


def test_cider_d_single_item_corpus_is_zero():
    # IDF = log(N / df) is 0 for every n-gram when N = 1; documented behaviour, same as the COCO toolkit
    assert cider_d([["a red circle"]], ["a red circle"]) == 0.0


def test_input_validation():
    with pytest.raises(ValueError, match="reference lists"):
        bleu4([["a"]], ["a", "b"])
    with pytest.raises(ValueError, match="non-empty list"):
        rouge_l(["a string, not a list"], ["a"])
    with pytest.raises(ValueError, match="empty corpus"):
        cider_d([], [])


def test_meteor_degrades_to_none(monkeypatch, tmp_path):
    monkeypatch.delenv(metrics.METEOR_JAR_ENV, raising=False)
    assert meteor(REFS, CORPUS) is None
    monkeypatch.setenv(metrics.METEOR_JAR_ENV, str(tmp_path / "missing.jar"))
    assert meteor(REFS, CORPUS) is None


def test_meteor_broken_jar_warns_and_returns_none(monkeypatch, tmp_path):
    jar = tmp_path / "meteor.jar"
    jar.write_bytes(b"not a jar")
    monkeypatch.setenv(metrics.METEOR_JAR_ENV, str(jar))
    monkeypatch.setattr(metrics.shutil, "which", lambda name: "/nonexistent/java")
    with pytest.warns(UserWarning, match="METEOR failed"):
        assert meteor(REFS, CORPUS) is None


def test_caption_scores_keys():
    scores = caption_scores(REFS, CORPUS)
    assert set(scores) == {"bleu4", "rouge_l", "cider_d", "meteor"}
    assert scores["bleu4"] == pytest.approx(1.0)
