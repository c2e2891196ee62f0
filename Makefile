# The two commands a fresh clone needs:  make run  (set up, then the whole offline pipeline)
#                                         make test (set up, then every unit test and notebook)
SHELL := /bin/bash
PYTHON_BOOTSTRAP ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline by default: nothing in the course path may reach the Hugging Face hub.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0
NBVAL_FLAGS := --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg
# Tests run in PYTEST_WORKERS processes (pytest-xdist; a notebook and its cells stay in one worker), each
# with one torch thread: on 2 cores that is faster than one process with 2 threads, and it does not
# stall when something else is busy (see `python -m utils.thread_bench`). Set RLHF_NUM_THREADS to override.
PYTEST_WORKERS ?= 2
PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile
ONE_THREAD := RLHF_NUM_THREADS=$${RLHF_NUM_THREADS:-1}
# The notebooks nbval runs: every chapter and its solutions (each runs top to bottom in 3 minutes or
# less with the artifacts of the default pipeline).
FINISHED := 00_setup_and_tour 01_self_attention 02_transformer_architecture \
            03_tokenizers_and_embeddings 04_causal_lm_training 05_decoding \
            06_instruction_finetuning 07_preference_data_and_human_feedback 08_reward_model \
            09_rl_basics_and_ppo 10_ppo_rlhf 11_evaluation_and_reward_hacking \
            12_dpo_rloo_grpo 13_rlaif_constitutional_ai 14_limits_rag_reasoning_tools
NOTEBOOKS := $(foreach n,$(FINISHED),notebooks/$(n).ipynb notebooks/solutions/$(n)_solutions.ipynb)

.PHONY: setup run test unit notebooks bench lint seeds freeze clean report hub-smoke

setup: $(STAMP)

# torch==2.13.0 is a CPU wheel on the course machines; bitsandbytes (QLoRA) only where CUDA is.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
	    $(PY) -m pip install --quiet bitsandbytes==0.50.2; fi
	touch $(STAMP)

run: setup
	$(PY) -m utils.pipeline

# Unit tests first (fast), then the pipeline's artifacts (built once, cached in results/), then the
# finished notebooks and their solutions under nbval.
test: setup
	$(ONE_THREAD) $(PY) -m pytest tests -q $(PARALLEL)
	$(PY) -m utils.pipeline
	$(ONE_THREAD) $(PY) -m pytest $(NBVAL_FLAGS) $(NOTEBOOKS) -q $(PARALLEL)

unit: setup
	$(ONE_THREAD) $(PY) -m pytest tests -q $(PARALLEL)

notebooks: setup
	$(ONE_THREAD) $(PY) -m pytest $(NBVAL_FLAGS) $(NOTEBOOKS) -q $(PARALLEL)

bench: setup
	$(PY) -m utils.bench
	$(PY) -m utils.thread_bench

# Linter and formatter check (ruff, pinned in requirements.txt; settings in pyproject.toml).
lint: setup
	$(PY) -m ruff check utils tests
	$(PY) -m ruff format --check utils tests

# How much the numbers vary: the pipeline on seeds 0-2 (artifacts side by side in results/), seed 0 again
# on another thread count, then results/seed_study.{json,md}. Opt-in: about 40 minutes on 2 cores.
SEEDS ?= 0 1 2
STAGES ?=
seeds: setup
	$(PY) -m utils.seed_study --seeds $(SEEDS) --threads-check 0 $(if $(STAGES),--stages $(STAGES))

# The hub profile's end-to-end smoke run, offline: every stage (data, tokenizer, sft, rm, ppo, eval) for a few
# steps with GPT2Config()-shaped random models on the real slices in ../shared/data. Opt-in (not in make test):
# ~45 CPU-seconds and ~3 GB of memory, minutes of wall time on a busy machine. The other hub tests run in make test.
hub-smoke: setup
	RLHF_HUB_SMOKE=1 $(ONE_THREAD) $(PY) -m pytest tests/test_hub_profile.py -q

# REPORT.md is generated from the chapters in docs/report/ (see utils/report.py). Standard library only,
# so the bootstrap Python suffices and no install is needed.
report:
	$(PYTHON_BOOTSTRAP) -m utils.report

freeze: setup
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' | \
	    { echo "# Exact pins for the course (CPU). Regenerate with: make freeze"; echo "torch==2.13.0"; cat; } > requirements.txt

clean:
	rm -rf results .pytest_cache
