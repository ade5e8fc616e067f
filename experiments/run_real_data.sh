#!/usr/bin/env bash
# The CPU-scale real-data results of README "Analyses", in the order they were run.
# Each command resumes where it stopped; logs go to experiments/out/*.log.
#   nohup experiments/run_real_data.sh > experiments/out/real_data.log 2>&1 &
set -x
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TJ=${TJ:-.venv/bin/tracin-jax}

# 1. No-word-overlap experiment at CPU scale (synthetic corpus, frozen word embedding).
$PY experiments/nooverlap.py --config configs/nooverlap_synthetic.py --out experiments/out/nooverlap_synthetic

# 2. The CNN per-layer study (Table 1) on SST-2: cancellation per layer + deletion per layer.
$PY experiments/deletion.py --config configs/sst2_cnn.py --out experiments/out/sst2_cnn \
  --methods "tracin_layer[word_embedding],tracin_layer[conv_0],tracin_layer[conv_1],tracin_layer[conv_2],tracin_layer[classifier],tracin_all" \
  --cancellation 512 --config.test_points.per_class=2 "--config.sweep.k_grid=(20, 50)" "--config.sweep.seeds=(0, 1)"

# 3. SST-2 on a 2-layer BERT (hidden 128) from scratch: the six methods of Table 4.
$PY experiments/deletion.py --config configs/sst2_bert_tiny.py --out experiments/out/sst2_bert_tiny \
  --methods tracin_we_topk,tracin_we,tracin_last,tracin_tfidf,influence_last,representer \
  --cancellation 256 --config.test_points.per_class=2 "--config.sweep.k_grid=(20, 50)" "--config.sweep.seeds=(0,)"

# 4. Cancellation per layer of the real pretrained MiniLM fine-tuned on SST-2 (existing run).
$TJ analyze cancellation --run experiments/out/sst2_minilm --num-examples 128 \
  --out experiments/out/sst2_minilm_cancellation --no-progress

# 5. SST-2 on the real pretrained MiniLM: a deletion-sized run (5,000 examples, one epoch).
$PY experiments/deletion.py --config configs/sst2_minilm.py --out experiments/out/sst2_minilm_del \
  --methods tracin_we_topk,tracin_we,tracin_last,tracin_tfidf,influence_last,representer \
  --config.data.max_train=5000 --config.tokenizer.max_length=48 --config.train.checkpoint_every_steps=60 \
  --config.test_points.per_class=1 "--config.sweep.k_grid=(50,)" "--config.sweep.seeds=(0,)"

# 6. Mislabel clusters (appendix A) on the SST-2 CNN run: hard examples from 5 models.
$TJ analyze clusters --run experiments/out/sst2_cnn/run --models 5 --out experiments/out/sst2_cnn_clusters --no-progress
