"""lokilm: curate data, build a tokenizer, pretrain (with multi-teacher distillation), evaluate and use small LMs."""

__version__ = "0.1.0"
