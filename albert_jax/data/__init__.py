"""ALBERT's data: the SentencePiece tokenizer and its trainer, corpora, masking, input pipelines."""
