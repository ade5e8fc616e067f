"""Wikipedia toxicity (tfds wikipedia_toxicity_subtypes, toxicity >= 0.5 -> toxic) on
BERT-small (google/bert_uncased_L-2_H-128_A-2). Paper: 50,000 train / 20,000 val,
SGD momentum 0.9, lr 2e-4, 20 epochs; 40 test points (20 per class)."""
from tracin_jax.config import base_config, use_hf_checkpoint, use_paper_sgd, use_tfds


def get_config():
    cfg = base_config()
    cfg.name = "toxicity_bert_tiny"
    use_tfds(cfg, "wikipedia_toxicity_subtypes", train_split="train", eval_split="validation",
             text_field="text", label_field="toxicity", max_train=50000, max_eval=20000)
    use_hf_checkpoint(cfg, "bert", "checkpoints/bert_uncased_L-2_H-128_A-2")
    use_paper_sgd(cfg, lr=2e-4, epochs=20, batch_size=32, checkpoint_every_epochs=4)
    return cfg
