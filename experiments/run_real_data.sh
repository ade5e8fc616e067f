#!/usr/bin/env bash
# The CPU-scale results of README "Results at CPU scale" (2-core CPU, shared; about 6 hours
# in all). Every command resumes where it stopped; rerunning one with more methods re-plans
# its sweep and reuses every finished retraining (that is how step 6 grew from three
# methods to seven).
# DATA_DIR holds the GLUE SST-2 CSVs train.csv and dev.csv (columns text,label; 0 = negative);
# without it the configs read TFDS glue/sst2.
#   nohup experiments/run_real_data.sh DATA_DIR > experiments/out/real_data.log 2>&1 &
# Sweeps use this version's design: the run's own seed is never retrained (seeds (0,)
# becomes (1,)), the `random` control is always there, and `sweep report` gives paired
# bootstrap intervals over the test points (and seeds) with the differences between methods.
set -x
cd "$(dirname "$0")/.."
SST2=()
if [ -n "${1:-}" ]; then
  DATA=$(cd "$1" && pwd)
  SST2=(--config.data.source=files "--config.data.files.train=$DATA/train.csv" "--config.data.files.eval=$DATA/dev.csv")
fi
PY=${PY:-.venv/bin/python}
TJ=${TJ:-.venv/bin/tracin-jax}
SIX=tracin_we_topk,tracin_we,tracin_last,tracin_tfidf,influence_last,representer,random

# 1. No-word-overlap experiment at CPU scale (synthetic corpus, frozen word embedding), the
#    four methods and the random control drawn from each test point's candidates, 3 seeds
#    (648 retrainings). ~26 min
$PY experiments/nooverlap.py --config configs/nooverlap_synthetic.py --out experiments/out/nooverlap_synthetic

# 2. The CNN per-layer study (Table 1) and bias vs no bias (sec. 3.2) on SST-2: cancellation
#    per layer over 512 examples, then deletion with TracIn on each layer's weights, on all
#    weights, and on all weights plus the biases; 10 test points, k = 20, 50, one seed, and
#    the linear datamodeling score over 24 half-data subsets (345 retrainings). ~1 h
$PY experiments/deletion.py --config configs/sst2_cnn.py --out experiments/out/sst2_cnn "${SST2[@]}" \
  --methods "tracin_layer[word_embedding],tracin_layer[conv_0],tracin_layer[conv_1],tracin_layer[conv_2],tracin_layer[classifier],tracin_all,tracin_all+bias,random" \
  --cancellation 512 --config.test_points.per_class=5 "--config.sweep.k_grid=(20, 50)" "--config.sweep.seeds=(0,)" \
  --config.sweep.lds.num_subsets=24

# 3. Cancellation per layer of the real pretrained MiniLM fine-tuned on SST-2 (the run of
#    README "Results measured here": 10,000 examples, 300 steps, dev accuracy 0.857). ~10 min
$TJ analyze cancellation --run experiments/out/sst2_minilm --num-examples 128 \
  --out experiments/out/sst2_minilm_cancellation --no-progress

# 4. Mislabel clusters (appendix A) on the SST-2 CNN run of step 2: hard examples from 5
#    models trained like the run (4 epochs) and early-stopped at its best dev epoch (2). ~5 min each
$TJ analyze clusters --run experiments/out/sst2_cnn/run --models 5 --out experiments/out/sst2_cnn_clusters --no-progress
$TJ analyze clusters --run experiments/out/sst2_cnn/run --models 5 --epochs 2 \
  --out experiments/out/sst2_cnn_clusters_es2 --no-progress

# 5. SST-2 on the real pretrained MiniLM, the six methods of Table 4, 10 test points, k = 50:
#    a deletion-sized run (5,000 examples, one epoch, max length 48) with length-grouped,
#    trimmed batches; one seed (seed 1: the run's seed 0 excluded), 139 retrainings, ~62 s
#    each here. ~2 h 20 min
$PY experiments/deletion.py --config configs/sst2_minilm.py --out experiments/out/sst2_minilm_10pt "${SST2[@]}" \
  --methods $SIX \
  --config.data.max_train=5000 --config.tokenizer.max_length=48 --config.train.checkpoint_every_steps=60 \
  --config.train.group_by_length=50 --config.train.pad_to_multiple=8 \
  --config.test_points.per_class=5 "--config.sweep.k_grid=(50,)" "--config.sweep.seeds=(0,)"

# 6. SST-2 on a 2-layer BERT (hidden 128) from scratch, the six methods of Table 4 and the
#    random control: 2 epochs (dev accuracy 0.760), 10 test points (5 per class), k = 20, 50,
#    one seed, and the linear datamodeling score over 24 half-data subsets (294 retrainings).
#    ~1 h 40 min (first run with three methods, 49 min; then the other four, 52 min)
$PY experiments/deletion.py --config configs/sst2_bert_tiny.py --out experiments/out/sst2_bert_tiny_v2 "${SST2[@]}" \
  --methods $SIX \
  --config.train.epochs=2 --config.train.checkpoint_every_epochs=0 --config.train.checkpoint_every_steps=104 \
  --config.test_points.per_class=5 "--config.sweep.k_grid=(20, 50)" "--config.sweep.seeds=(0,)" \
  --config.sweep.lds.num_subsets=24

# Tables for README, its figures (docs/figures) and the reports behind them (docs/results).
$PY experiments/summarize.py --figures docs/figures --results docs/results
