import json

import numpy as np

from finecaption_ros.cli import main
from finecaption_ros.data.compositioncap import load_compositioncap
from finecaption_ros.evaluate import evaluate
from finecaption_ros.tasks import ATTRIBUTES


def test_evaluation_report_has_every_split(random_model_dir):
    from finecaption_ros.captioner import Captioner

    report = evaluate(Captioner.from_pretrained(random_model_dir), n=3, seed=7, progress=False)
    attribute = report["attribute"]
    counts = attribute["counts"]
    assert {"all", "seen"} <= set(attribute["accuracy"])
    assert counts.get("touching", 0) + counts.get("apart", 0) == counts["all"]
    assert counts.get("seen", 0) + counts.get("novel", 0) == counts["all"]
    assert set(ATTRIBUTES) <= set(attribute["accuracy"])
    assert sum(attribute["counts"][a] for a in ATTRIBUTES) == attribute["counts"]["all"]
    for task in ("attribute", "dense", "global"):
        scores = report[task]["scores"]
        assert {"bleu4", "rouge_l", "cider_d", "meteor"} <= set(scores)
        assert 0.0 <= scores["bleu4"] <= 1.0
    assert 0.0 <= report["global"]["accuracy"]["count"] <= 1.0


def test_demo_data_round_trips_through_the_compositioncap_loader(tmp_path):
    assert main(["demo-data", "--out", str(tmp_path), "--n", "3", "--seed", "2"]) == 0
    records = load_compositioncap(tmp_path / "annotations.json", tmp_path)
    assert len(records) == 3
    from PIL import Image

    labels = np.asarray(Image.open(tmp_path / "masks" / "000000.png"))
    for region in records[0].regions:
        assert np.array_equal(region.mask, labels == region.region_id)
        assert set(region.attribute_captions) == set(ATTRIBUTES)


def test_caption_command_prints_json(random_model_dir, capsys):
    assert main(["caption", "--model", str(random_model_dir), "--demo-seed", "3", "--task", "attribute",
                 "--attributes", "color,size", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["backend"] == "torch"
    assert {c["attribute"] for c in printed["captions"]} == {"color", "size"}


def test_caption_command_decodes_relations_freely_only_when_asked(random_model_dir, capsys):
    from finecaption_ros.captioner import Captioner
    from finecaption_ros.data.scenes import SceneGenerator

    scene = SceneGenerator(split="eval", seed=3).sample()  # what --demo-seed 3 captions
    printed = {}
    for flags in ([], ["--free-relations"]):
        assert main(["caption", "--model", str(random_model_dir), "--demo-seed", "3", "--task", "attribute",
                     "--attributes", "relative_location", "--json", *flags]) == 0
        printed[bool(flags)] = [c["caption"] for c in json.loads(capsys.readouterr().out)["captions"]]
    for free, captions in printed.items():
        captioner = Captioner.from_pretrained(random_model_dir, grounded_relations=not free)
        assert captions == [r.caption for r in captioner.caption(scene.image, scene.labels, task="attribute",
                                                                 attributes=["relative_location"])]
    assert printed[True] != printed[False]


def test_caption_command_reports_bad_input(random_model_dir, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "image.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "masks.png")
    code = main(["caption", "--model", str(random_model_dir), "--image", str(tmp_path / "image.png"),
                 "--masks", str(tmp_path / "masks.png")])
    assert code == 2
    assert "must match the image size" in capsys.readouterr().err


def test_camera_suite_reports_every_condition_count_and_consistency(random_model_dir):
    from finecaption_ros.camera_suite import CONDITIONS, format_table, run_suite
    from finecaption_ros.captioner import Captioner
    from finecaption_ros.data.scenes import COUNT_WORDS, DENSE_FIELDS

    report = run_suite(Captioner.from_pretrained(random_model_dir), n=1, seed=3, progress=False, count_scenes=1,
                       consistency_scenes=1)
    assert list(report["conditions"]) == [c.name for c in CONDITIONS]
    for row in report["conditions"].values():
        assert row["regions"] >= 1
        for key in list(ATTRIBUTES) + ["dense_all_right", "count"]:
            assert 0.0 <= row[key] <= 1.0
    assert list(report["global_count_by_number"]) == list(COUNT_WORDS.values())
    assert list(report["density_count_by_number"]) == list(COUNT_WORDS.values())
    assert all(0.0 <= v <= 1.0 for v in report["density_count_by_number"].values())
    assert report["consistency"]["regions"] >= 1
    differing = report["consistency"]["differing"]
    assert set(differing) <= set(DENSE_FIELDS) | {"unparsed"}
    regions, same = report["consistency"]["regions"], report["consistency"]["same_caption"]
    assert sum(differing.values()) >= round(regions * (1 - same))  # every region that differs names why
    assert report["misses"]  # an untrained model misses the targets, and the report says so
    table = format_table(report)
    assert all(f"| {c.name} |" in table for c in CONDITIONS) and "numbers below target" in table
    assert "rounded density sum right" in table
    json.dumps(report)


def test_the_consistency_row_names_the_attributes_that_differ_across_renderings():
    from finecaption_ros.camera_suite import _differing_attributes
    from finecaption_ros.data.scenes import SceneObject

    def dense(**changes):
        fields = dict(region_id=1, category="circle", color="red", texture="solid", size="small", position="top left")
        return SceneObject(**(fields | changes)).dense_caption()

    assert _differing_attributes({dense()}) == []
    assert _differing_attributes({dense(), dense(texture="striped"), dense(size="large", texture="checkered")}) \
        == ["size", "texture"]
    assert _differing_attributes({dense(), dense(position="bottom right")}) == ["position"]
    assert _differing_attributes({dense(), "a red circle"}) == ["unparsed"]


def test_eval_suite_camera_refuses_tasks(random_model_dir, capsys):
    code = main(["eval", "--model", str(random_model_dir), "--suite", "camera", "--tasks", "dense"])
    assert code == 2
    assert "--tasks applies to --suite generator" in capsys.readouterr().err
