"""The machine and the user's files: safe outputs and signals, checked inputs, streams that may
close, the thread and memory policies, and the memory estimate before a run."""
