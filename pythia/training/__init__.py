"""What the trainer is handed: fine-tuning from a pretrained source, the data-parallel reducer on
MPI, and the named presets."""
