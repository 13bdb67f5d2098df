"""Text work: tokenizing and windowing, pooling, embedding encodings, chat prompts and sampling options."""
