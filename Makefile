# finecaption_ros: every target sets up what it needs (a venv with CPU torch, the ROS 2 wheels, the generated
# messages) on first use and re-checks quickly afterwards.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

# Nothing is ever fetched from a model hub, and DDS traffic never leaves this machine.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST

.PHONY: setup demo test bench default-model ablations clean

$(VENV)/.requirements: requirements.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

setup: $(VENV)/.requirements
	bash scripts/setup_ros.sh $(VENV)

# The main job: demo camera -> finecaption_node (embedded default model) -> captions printed from /region_captions,
# annotated frames written to out/demo/.
demo: setup
	bash scripts/run_demo.sh --frames 5 --out out/demo

test: setup
	export ROS_DOMAIN_ID=$$(( 1 + $$$$ % 230 )); $(PY) -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)

bench: setup
	$(PY) bench/captioner_bench.py
	$(PY) bench/engines_vs_torch.py
	$(PY) bench/node_overhead.py
	$(PY) bench/bag_offline.py
	$(PY) bench/grounded_relations.py

# How the embedded default model was trained (wall time in finecaption_ros/checkpoints/default/training_summary.json).
# As the packaged model was made (README, "The embedded default model"): the base architecture from scratch, a
# fine-tune that adds the neighbour and count tokens, that fine-tune resumed to 4000 steps with more relation
# questions (its schedule stretched to the new length), and a fine-tune on camera-like frames of the world as
# data/scenes.py states it (every frame shape, rendering condition and imperfect mask of the camera suite), another
# on frames rendered at twice the model's view, the object counter's head retrained alone, a fine-tune that
# names the neighbours, and the counter's head trained on further.
FINETUNE = --init-from runs/default-base --out runs/default --lr 5e-4 --threads 2 --neighbor-tokens 2 \
  --count-token true --p-global 0.5
CAMERA_STEPS ?= 3600
CAMERA = --init-from runs/default --out runs/default-camera --lr 5e-4 --threads 2 --neighbor-tokens 2 \
  --count-token true --p-global 0.5 --relation-boost 3 --checkpoint-every 200 --steps $(CAMERA_STEPS)
# Fifth: frames rendered at twice the model's view (data/camera.py, RENDER_OVERSAMPLE), more weight on counts.
CAMERA2 = --init-from runs/default-camera --out runs/default-camera2 --lr 3e-4 --threads 2 --neighbor-tokens 2 \
  --count-token true --p-global 0.5 --relation-boost 3 --checkpoint-every 200 --steps 4000 --count-weight 1.5
# Sixth: the object counter's density head alone (model/scene_context.py: 3x3 convolutions over the last two
# ConvNeXt maps, replacing a per-cell head on the last), on the frozen high-res features and without the caption
# loss, so every other output of the model stays as stage 5 left it.
COUNT = --init-from runs/default-camera2 --out runs/default-count --count-head-only --scenes-per-batch 32 \
  --workers 2 --steps 1800 --lr 1e-3 --threads 2 --checkpoint-every 200
# Seventh: the neighbour tokens get the neighbours' category and colour (model/scene_context.py), with the high-res
# encoder and the density head frozen, more relation questions.
NAMES = --init-from runs/default-count --out runs/default-names --lr 3e-4 --threads 2 --neighbor-names true \
  --freeze hr_encoder,counter.map_norm,counter.map_head --p-global 0.5 --relation-boost 6 --checkpoint-every 200 \
  --steps 3000 --count-weight 0
# Eighth: the density head alone again, on the features stage 7 left frozen, at half stage 6's learning rate.
COUNT2 = --init-from runs/default-names --out runs/default-count2 --count-head-only --scenes-per-batch 32 \
  --workers 2 --steps 2000 --lr 5e-4 --threads 2 --checkpoint-every 200
default-model: setup
	$(VENV)/bin/finecaption train --out runs/default-base --steps 3000 --threads 2 --neighbor-tokens 0 \
	  --count-token false --overwrite
	$(VENV)/bin/finecaption train $(FINETUNE) --steps 2000 --relation-boost 3 --overwrite
	$(VENV)/bin/finecaption train $(FINETUNE) --steps 4000 --relation-boost 6 --resume
	$(VENV)/bin/finecaption train $(CAMERA) --resume
	$(VENV)/bin/finecaption train $(CAMERA2) --resume
	$(VENV)/bin/finecaption train $(COUNT) --resume
	$(VENV)/bin/finecaption train $(NAMES) --resume
	$(VENV)/bin/finecaption train $(COUNT2) --resume
	mkdir -p finecaption_ros/checkpoints/default
	cp runs/default-count2/{config.json,model.safetensors,tokenizer.json,tokenizer_config.json,training_summary.json} \
	   finecaption_ros/checkpoints/default/

# The README's ablation table: four variants, the same budget each, evaluated on the same fresh scenes. They test
# the paper's mask and high-res claims on FineCaption's own architecture, so without the scene-context tokens,
# and their relations are decoded freely: grounding would name neighbours these variants cannot see.
ABLATION_STEPS ?= 400
ABLATION_BASE = --steps $(ABLATION_STEPS) --threads 1 --neighbor-tokens 0 --count-token false --overwrite
ablations: setup
	$(VENV)/bin/finecaption train --out runs/ablation-full $(ABLATION_BASE)
	$(VENV)/bin/finecaption train --out runs/ablation-box $(ABLATION_BASE) --mask-mode box
	$(VENV)/bin/finecaption train --out runs/ablation-nomask $(ABLATION_BASE) --mask-mode none
	$(VENV)/bin/finecaption train --out runs/ablation-lowres $(ABLATION_BASE) --use-hr false
	for v in full box nomask lowres; do \
	  $(VENV)/bin/finecaption eval --model runs/ablation-$$v --n 100 --seed 7 --tasks attribute --free-relations \
	    --out runs/ablation-$$v/eval.json > /dev/null; done
	$(PY) bench/ablation_table.py runs/ablation-{full,box,nomask,lowres}/eval.json

clean:
	rm -rf build out
