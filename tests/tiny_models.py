"""Tiny models of every supported architecture, built locally from configs (no download), for the test matrices."""

from __future__ import annotations

import torch
import transformers as tf

MAX_POSITIONS = 64
"""Every tiny model's trained length: inputs longer than this exercise "longer than the table"."""

BERT_LIKE = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=MAX_POSITIONS,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
_BART_LIKE = dict(
    vocab_size=99,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    max_position_embeddings=MAX_POSITIONS,
    dropout=0.0,
    attention_dropout=0.0,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
    forced_eos_token_id=None,
)

CONFIGS = {
    "bert": lambda: tf.BertConfig(**BERT_LIKE),
    "roberta": lambda: tf.RobertaConfig(**BERT_LIKE, pad_token_id=1),
    "xlm-roberta": lambda: tf.XLMRobertaConfig(**BERT_LIKE, pad_token_id=1),
    "camembert": lambda: tf.CamembertConfig(**BERT_LIKE, pad_token_id=1),
    "electra": lambda: tf.ElectraConfig(**BERT_LIKE, embedding_size=16),
    "distilbert": lambda: tf.DistilBertConfig(
        vocab_size=99,
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=37,
        max_position_embeddings=MAX_POSITIONS,
        dropout=0.0,
        attention_dropout=0.0,
    ),
    "bart": lambda: tf.BartConfig(**_BART_LIKE),
    "mbart": lambda: tf.MBartConfig(**_BART_LIKE),
}

HEADS = {
    "bert": [
        "BertModel",
        "BertForSequenceClassification",
        "BertForTokenClassification",
        "BertForMaskedLM",
        "BertForQuestionAnswering",
        "BertForMultipleChoice",
        "BertForPreTraining",
    ],
    "roberta": [
        "RobertaModel",
        "RobertaForSequenceClassification",
        "RobertaForTokenClassification",
        "RobertaForMaskedLM",
        "RobertaForQuestionAnswering",
    ],
    "xlm-roberta": ["XLMRobertaModel", "XLMRobertaForSequenceClassification", "XLMRobertaForMaskedLM"],
    "camembert": ["CamembertModel", "CamembertForSequenceClassification"],
    "electra": [
        "ElectraModel",
        "ElectraForSequenceClassification",
        "ElectraForTokenClassification",
        "ElectraForMaskedLM",
        "ElectraForQuestionAnswering",
        "ElectraForPreTraining",
    ],
    "distilbert": [
        "DistilBertModel",
        "DistilBertForSequenceClassification",
        "DistilBertForTokenClassification",
        "DistilBertForMaskedLM",
        "DistilBertForQuestionAnswering",
    ],
    "bart": [
        "BartModel",
        "BartForConditionalGeneration",
        "BartForSequenceClassification",
        "BartForQuestionAnswering",
        "BartForCausalLM",
    ],
    "mbart": [
        "MBartModel",
        "MBartForConditionalGeneration",
        "MBartForSequenceClassification",
        "MBartForQuestionAnswering",
        "MBartForCausalLM",
    ],
}
"""Every task head of each family that transformers ships (the base model first)."""

SEQ2SEQ = ("bart", "mbart")


def tiny_model(model_type: str, head: str | None = None, seed: int = 0) -> torch.nn.Module:
    """A tiny randomly initialized model in eval mode; `head` is a class name (default: the family's base model)."""
    torch.manual_seed(seed)
    cls = getattr(tf, head or HEADS[model_type][0])
    return cls(CONFIGS[model_type]()).eval()


def token_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random ids that avoid the special ids 0-2 (pad is 1 for RoBERTa and BART)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 99, (batch, length), generator=generator)


def hidden(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """The encoder's last hidden state (for seq2seq models: the encoder's), the quantity the matrix compares."""
    encoder = model.get_encoder() if model.config.model_type in SEQ2SEQ else model
    return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
