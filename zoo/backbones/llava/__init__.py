"""The LLaVA family's building blocks over transformers: vision-tower conversion, tokenizer, conversation
templates and label building, model assembly."""
