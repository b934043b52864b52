"""Evaluation on fresh synthetic scenes: exact attribute accuracy and caption metrics, split by task and by
seen / novel (held-out) attribute combinations, plus the splits the README's ablations use."""
from __future__ import annotations

from collections import defaultdict

from tqdm import tqdm

from .captioner import Captioner
from .data.scenes import COUNT_WORDS, SceneGenerator
from .metrics import caption_scores
from .tasks import ATTRIBUTE_TASK, ATTRIBUTES, DENSE_TASK, GLOBAL_TASK, TASKS


class Tally:
    """Right / total per key (a split, an attribute); the camera suite counts with it too."""

    def __init__(self):
        self.right = defaultdict(int)
        self.total = defaultdict(int)

    def add(self, keys, correct: bool) -> None:
        for key in keys:
            self.total[key] += 1
            self.right[key] += int(correct)

    def rates(self) -> dict[str, float]:
        return {k: round(self.right[k] / self.total[k], 4) for k in sorted(self.total)}

    def counts(self) -> dict[str, int]:
        return dict(sorted(self.total.items()))


def evaluate(captioner: Captioner, n: int = 500, seed: int = 0, tasks=TASKS, attributes=ATTRIBUTES,
             progress: bool = True) -> dict:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a number of scenes >= 1, got {n!r:.40}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must name some of {', '.join(TASKS)}; got {list(tasks)!r:.80}")
    generator = SceneGenerator(split="eval", seed=seed)
    attribute_tally, dense_tally, global_tally = Tally(), Tally(), Tally()
    references = {t: [] for t in TASKS}
    hypotheses = {t: [] for t in TASKS}
    for _ in tqdm(range(n), desc="eval scenes", disable=not progress):
        scene = generator.sample()
        objects = {o.region_id: o for o in scene.objects}
        if ATTRIBUTE_TASK in tasks:
            for result in captioner.caption(scene.image, scene.labels, task=ATTRIBUTE_TASK, attributes=attributes):
                obj = objects[result.region_id]
                truth = obj.attribute(result.attribute)
                split = "novel" if obj.novel else "seen"
                keys = ["all", split, f"{result.attribute}", f"{result.attribute}/{split}"]
                keys.append("touching" if obj.touching else "apart")
                attribute_tally.add(keys, result.caption == truth)
                references[ATTRIBUTE_TASK].append([truth])
                hypotheses[ATTRIBUTE_TASK].append(result.caption)
        if DENSE_TASK in tasks:
            for result in captioner.caption(scene.image, scene.labels, task=DENSE_TASK):
                obj = objects[result.region_id]
                truth = obj.dense_caption()
                split = "novel" if obj.novel else "seen"
                dense_tally.add(["all", split, "touching" if obj.touching else "apart"], result.caption == truth)
                references[DENSE_TASK].append([truth])
                hypotheses[DENSE_TASK].append(result.caption)
        if GLOBAL_TASK in tasks:
            result = captioner.caption(scene.image, task=GLOBAL_TASK)[0]
            truth = scene.global_caption()
            count_word = COUNT_WORDS[len(scene.objects)]
            global_tally.add(["count"], result.caption.split(" ")[0] == count_word)
            global_tally.add(["exact"], result.caption == truth)
            references[GLOBAL_TASK].append([truth])
            hypotheses[GLOBAL_TASK].append(result.caption)

    report: dict = {"model": captioner.model_id, "backend": captioner.backend, "n_scenes": n, "seed": seed}
    if ATTRIBUTE_TASK in tasks:
        report[ATTRIBUTE_TASK] = {"accuracy": attribute_tally.rates(), "counts": attribute_tally.counts(),
                                  "scores": caption_scores(references[ATTRIBUTE_TASK], hypotheses[ATTRIBUTE_TASK])}
    if DENSE_TASK in tasks:
        report[DENSE_TASK] = {"all_attributes_right": dense_tally.rates(), "counts": dense_tally.counts(),
                              "scores": caption_scores(references[DENSE_TASK], hypotheses[DENSE_TASK])}
    if GLOBAL_TASK in tasks:
        report[GLOBAL_TASK] = {"accuracy": global_tally.rates(),
                               "scores": caption_scores(references[GLOBAL_TASK], hypotheses[GLOBAL_TASK])}
    return report
