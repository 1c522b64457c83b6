"""Model families. Each is one module composed from `pythia.layers`; every family offers the
same small interface, so training, sampling, checkpoints and the system wrappers never ask
which family they hold.

A family module defines a config dataclass and a model class:

    config.to_dict() -> dict;  Config.from_dict(d) -> Config          (validated; ConfigError)
    config.vocab_size, config.block_size, config.n_layer              (what callers read)

    model = Model(config, seed=0, *, init=True)
    model.config
    model.params: dict[str, ndarray]          by Hugging Face name; views into params_memory
    model.grads:  dict[str, ndarray]          same names and shapes; views into grads_memory
    model.params_memory: ndarray (P,)         float32, every parameter end to end
    model.grads_memory:  ndarray (P,)         float32, the gradients laid out like params_memory
    model.layout: dict[str, (offset, shape)]  where each named parameter sits in params_memory
                                              (the optimizer names its checkpoint state by it)
    model.decay_mask() -> list[(lo, hi, decays)]   ranges of params_memory covering it in order,
                                              with whether AdamW's weight decay applies there
    model.forward(idx (B, T)) -> logits (B, T, V)               keeps no activations
    model.loss(idx (B, T), targets (B, T)) -> float             mean cross-entropy; keeps activations
    model.backward() -> None                  d(last loss)/d(params) into grads (overwritten)
    model.new_kv_cache(zeros=np.zeros) -> cache                 cache.length: positions filled;
                                              zeros(shape, dtype) allocates its arrays (the caller's
                                              memory policy, e.g. pythia.system.memory.lazy_zeros)
    model.forward_cached(tokens (Tn,), cache) -> logits (V,)    logits after the last new token
    model.forward_cached_batch([tokens_b (Tn_b,)], [cache_b]) -> logits (B, V)
                                              several sequences in one pass, each against its own cache
    model.load_params(params: dict) -> None   copy in place; exact names and shapes (ValueError)
    model.num_params() -> int

For int8 inference (pythia.quant.model), a family also names the matrices its passes multiply by:

    model.inference_matrices() -> {name: (W (O, C) view, bias (O,) or None)}   every linear layer,
                                              the token table and the head, in (out, in) layout
    model.EMBEDDING                           the token table's name among them
    model.quantized                           None, or {name: pythia.quant.QuantLinear}; when set,
                                              forward and forward_cached use those, never the float
                                              matrices, and loss()/loss_rows() refuse to train

Training passes may also be split by rows, for the system layer's batch sharding
(pythia.system.sharding.ShardedModel):

    model.check_pair(idx, targets) -> (idx, targets)            validated (ValueError naming the problem)
    model.loss_rows(idx (b, T), targets (b, T)) -> (losses (b * T,), acts)   acts["idx"] is idx
    model.backward_rows(acts, grads: dict, n_total: int) -> None
        writes d(sum(losses) / n_total)/d(params) into `grads` (same names and shapes as params)

A target may be layers.IGNORE (-1): not scored; the mean and n_total count the scored targets only
(layers.counted). backward_rows writes only the names `grads` holds: a name absent from it is frozen
and its gradient is not computed (a LoRA run passes the adapters' gradients alone).

Low-rank adapters (pythia.lora) work on any family through three more members:

    model.lora_targets() -> {weight name: (group "attn" | "mlp", orientation "out_in" | "in_out")}
                                              the projections an adapter may train
    model.adapter                             None, or the hook its linear layers call
                                              (layers.adapter_forward / adapter_backward)
    model.HF_PREFIX                           what transformers' state-dict keys add before a name

loss() is loss_rows + the mean; backward() is backward_rows(acts, self.grads, B * T). The model itself starts no thread, sets no BLAS
option and holds no memory policy: the commands wrap it.
"""

# name -> module path of each family; a checkpoint records the name (meta "family"), and a model
# says its own through its FAMILY class attribute
FAMILIES = {"gpt2": ("gpt2", "PythiaConfig", "Pythia"), "llama": ("llama", "LlamaConfig", "Llama")}


def family(name: str):
    """(Config class, Model class, param_shapes(config) -> {name: shape}) of the family `name`;
    ValueError for an unknown one."""
    import importlib
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; this Pythia knows {', '.join(sorted(FAMILIES))}")
    module, config, model = FAMILIES[name]
    m = importlib.import_module(f"{__name__}.{module}")
    return getattr(m, config), getattr(m, model), m.param_shapes


def family_of(model) -> str:
    """The family name of a model object (its FAMILY attribute; GPT-2 when it has none)."""
    return getattr(model, "FAMILY", "gpt2")
