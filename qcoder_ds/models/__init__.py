"""Model catalogue, sources, checkpoint readers, tokenizer and chat template."""
