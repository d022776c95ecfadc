"""Training: the paper's recipes, resumable, on CPU or GPU, one or many processes."""
