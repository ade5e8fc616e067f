"""MNLI (tfds glue/mnli, premise/hypothesis pairs, validation_matched) on BERT-base
(a Hugging Face `bert-base-uncased` directory). Paper: full training set, SGD
momentum 0.9; 30 test points (10 per class); k in {20, ..., 5000}."""
from tracin_jax.config import base_config, use_hf_checkpoint, use_paper_sgd, use_tfds


def get_config():
    cfg = base_config()
    cfg.name = "mnli_bert_base"
    use_tfds(cfg, "glue/mnli", train_split="train", eval_split="validation_matched",
             text_field="premise", pair_field="hypothesis", label_field="label",
             max_train=None, max_eval=None)
    use_hf_checkpoint(cfg, "bert", "checkpoints/bert-base-uncased")
    use_paper_sgd(cfg, lr=2e-3, epochs=3, batch_size=64, checkpoint_every_epochs=1)
    return cfg
