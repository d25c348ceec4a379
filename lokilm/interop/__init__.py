"""Models in and out: export to Hugging Face format, import from Hugging Face folders and GGUF files."""
