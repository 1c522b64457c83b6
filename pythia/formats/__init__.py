"""Files Pythia reads and writes: its checkpoints and their schema, safetensors, Hugging Face
GPT-2 folders, and the export to that layout."""
