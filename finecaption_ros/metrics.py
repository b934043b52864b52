"""Caption metrics: corpus BLEU-4, ROUGE-L, CIDEr-D and (when Java and a jar are present) METEOR.

Each function takes `references[i]`, a list of reference captions for item i, and `hypotheses[i]`, the one
generated caption for item i, and returns one corpus-level score. The formulas follow the COCO caption toolkit
(pycocoevalcap), written here from the published definitions:

- BLEU-4 (Papineni et al. 2002): n-gram counts clipped by the largest count in any one reference, summed over the
  corpus before dividing, geometric mean of the four precisions, brevity penalty against the reference length
  closest to each hypothesis (the shorter one on ties). COCO adds 1e-15/1e-9 to numerators/denominators; we do
  not, so a perfect corpus scores exactly 1 and a zero n-gram precision scores exactly 0.
- ROUGE-L (Lin 2004): longest common subsequence; as in COCO the precision and the recall are each maximised over
  the references, then combined with beta = 1.2; the corpus score is the mean over hypotheses.
- CIDEr-D (Vedantam et al. 2015): TF-IDF n-gram vectors (n = 1..4) with document frequencies taken from the
  references of the evaluated corpus, hypothesis weights clipped by reference weights, a Gaussian length penalty
  (sigma = 6), averaged over n and references, times 10. Because the IDF comes from the corpus itself, a corpus of
  one item scores 0, and scores are only comparable between runs on the same references.

Tokenisation: lowercase, split `,:.?!;` off as separate tokens, split on whitespace. COCO's PTB tokenizer drops
punctuation instead, so absolute numbers here differ slightly from published ones; compare models with this
module, not against numbers from papers.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import warnings
from collections import Counter

_PUNCT = re.compile(r"([,:.?!;])")


def tokenize(text: str) -> list[str]:
    return _PUNCT.sub(r" \1 ", text.lower()).split()


def _check(references: list[list[str]], hypotheses: list[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference lists but {len(hypotheses)} hypotheses; pass one list per hypothesis")
    if not hypotheses:
        raise ValueError("empty corpus: nothing to score")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r}")


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu4(references: list[list[str]], hypotheses: list[str]) -> float:
    _check(references, hypotheses)
    matched, guessed = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for refs, hyp in zip(references, hypotheses):
        hyp_tokens = tokenize(hyp)
        ref_tokens = [tokenize(r) for r in refs]
        hyp_len += len(hyp_tokens)
        # closest reference length; min over (distance, length) prefers the shorter reference on ties
        ref_len += min((abs(len(r) - len(hyp_tokens)), len(r)) for r in ref_tokens)[1]
        for n in range(1, 5):
            max_ref_counts = Counter()
            for r in ref_tokens:
                max_ref_counts |= _ngrams(r, n)  # | keeps the max count per n-gram
            hyp_counts = _ngrams(hyp_tokens, n)
            matched[n - 1] += sum(min(c, max_ref_counts[g]) for g, c in hyp_counts.items())
            guessed[n - 1] += max(0, len(hyp_tokens) - n + 1)
    if hyp_len == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / g) for m, g in zip(matched, guessed)) / 4
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def _lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(references: list[list[str]], hypotheses: list[str], beta: float = 1.2) -> float:
    _check(references, hypotheses)
    total = 0.0
    for refs, hyp in zip(references, hypotheses):
        hyp_tokens = tokenize(hyp)
        precision = recall = 0.0
        for ref in refs:
            ref_tokens = tokenize(ref)
            lcs = _lcs_length(ref_tokens, hyp_tokens)
            if lcs:
                precision = max(precision, lcs / len(hyp_tokens))
                recall = max(recall, lcs / len(ref_tokens))
        if precision and recall:
            total += (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
    return total / len(hypotheses)


def _all_ngrams(tokens: list[str], max_n: int = 4) -> Counter:
    counts = Counter()
    for n in range(1, max_n + 1):
        counts.update(_ngrams(tokens, n))
    return counts


def cider_d(references: list[list[str]], hypotheses: list[str], sigma: float = 6.0) -> float:
    _check(references, hypotheses)
    ref_counts = [[_all_ngrams(tokenize(r)) for r in refs] for refs in references]
    hyp_counts = [_all_ngrams(tokenize(h)) for h in hypotheses]

    # document frequency: in how many items' reference sets an n-gram occurs
    doc_freq = Counter()
    for refs in ref_counts:
        doc_freq.update(set().union(*refs))
    log_num_docs = math.log(len(references))

    def tfidf(counts: Counter) -> tuple[dict, list[float]]:
        vec = {g: tf * (log_num_docs - math.log(max(1.0, doc_freq[g]))) for g, tf in counts.items()}
        norms = [0.0] * 4
        for g, w in vec.items():
            norms[len(g) - 1] += w * w
        return vec, [math.sqrt(x) for x in norms]

    total = 0.0
    for refs, hyp, hyp_text, ref_texts in zip(ref_counts, hyp_counts, hypotheses, references):
        hyp_vec, hyp_norm = tfidf(hyp)
        hyp_len = len(tokenize(hyp_text))
        item = 0.0
        for ref, ref_text in zip(refs, ref_texts):
            ref_vec, ref_norm = tfidf(ref)
            sims = [0.0] * 4
            for g, w in hyp_vec.items():
                # min() clips a hypothesis that repeats an n-gram more often than the reference does (the "-D")
                sims[len(g) - 1] += min(w, ref_vec.get(g, 0.0)) * ref_vec.get(g, 0.0)
            for n in range(4):
                if hyp_norm[n] and ref_norm[n]:
                    sims[n] /= hyp_norm[n] * ref_norm[n]
            delta = hyp_len - len(tokenize(ref_text))
            item += sum(sims) / 4 * math.exp(-(delta**2) / (2 * sigma**2))
        total += 10.0 * item / len(refs)
    return total / len(hypotheses)


METEOR_JAR_ENV = "FINECAPTION_METEOR_JAR"


def meteor(references: list[list[str]], hypotheses: list[str]) -> float | None:
    """METEOR 1.5 via its jar (as COCO does); None when Java or the jar (env FINECAPTION_METEOR_JAR) is missing."""
    _check(references, hypotheses)
    java, jar = shutil.which("java"), os.environ.get(METEOR_JAR_ENV)
    if not java or not jar or not os.path.isfile(jar):
        return None

    def clean(text: str) -> str:
        return " ".join(text.replace("|||", " ").split())

    # -stdio answers one stats line per SCORE line, then per-segment scores and the corpus score after EVAL
    # (two JVM runs because the EVAL line needs the stats the SCORE lines produce)
    lines = [" ||| ".join(["SCORE", *map(clean, refs), clean(hyp)]) for refs, hyp in zip(references, hypotheses)]
    try:
        out = _run_meteor(java, jar, lines)
        stats = out[: len(lines)]
        out = _run_meteor(java, jar, [" ||| ".join(["EVAL", *stats])])
        return float(out[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        warnings.warn(f"METEOR failed ({err}); reporting it as unavailable")
        return None


def _run_meteor(java: str, jar: str, lines: list[str]) -> list[str]:
    proc = subprocess.run([java, "-jar", "-Xmx2G", jar, "-", "-", "-stdio", "-l", "en", "-norm"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=600, check=True)
    return [line for line in proc.stdout.splitlines() if line.strip()]


def caption_scores(references: list[list[str]], hypotheses: list[str]) -> dict:
    return {
        "bleu4": bleu4(references, hypotheses),
        "rouge_l": rouge_l(references, hypotheses),
        "cider_d": cider_d(references, hypotheses),
        "meteor": meteor(references, hypotheses),
    }
