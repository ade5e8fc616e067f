"""Toxicity on RoBERTa-base (a Hugging Face `roberta-base` directory); otherwise the
toxicity_bert_tiny settings (paper sec. 5, "Toxicity-Roberta")."""
from tracin_jax.config import base_config, use_hf_checkpoint, use_paper_sgd, use_tfds


def get_config():
    cfg = base_config()
    cfg.name = "toxicity_roberta_base"
    use_tfds(cfg, "wikipedia_toxicity_subtypes", train_split="train", eval_split="validation",
             text_field="text", label_field="toxicity", max_train=50000, max_eval=20000)
    use_hf_checkpoint(cfg, "roberta", "checkpoints/roberta-base")
    cfg.model.pad_token_id = 1  # RoBERTa's <pad>
    use_paper_sgd(cfg, lr=2e-4, epochs=20, batch_size=32, checkpoint_every_epochs=4)
    return cfg
