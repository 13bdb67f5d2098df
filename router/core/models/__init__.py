"""Each model as the router knows it: contract, tokenizer and files, versions in the registry, the catalog."""
