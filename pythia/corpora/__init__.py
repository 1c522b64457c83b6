"""Where training batches come from: text files streamed in chunks, prepared token files
(write, memory-map, validate) and the batch sampler."""
