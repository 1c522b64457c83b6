"""A whole model with int8 weights: every matrix it multiplies by held in Q8_0.

Any family works that offers, beside the family interface (pythia.models):

    model.inference_matrices() -> {name: (W (O, C) view, bias (O,) or None)}
        every matrix forward and forward_cached multiply by (linear layers, the token
        table, the head), by the name the model's own products look up
    model.EMBEDDING                the token table's name among them (rows are looked up too)
    model.quantized                None (float32), or {name: QuantLinear} that those products use

Everything else (norms, biases of the norms, position tables, the KV cache, softmax) stays
float32. A quantized model is built afresh with init=False, so the float32 matrices it does not
use are never written and their pages never become resident; only the kept float parameters
are copied in.

    q = quantize_model(model)                      # a new model; `model` is left as it was
    q = quantize_tensors(Model, config, read)      # the same, one matrix at a time: read(name, out)
    arrays = quantized_arrays(q)                   # {"name.q", "name.scales"[, "name.bias"]}
    q2 = model_from_quantized(Model, config, float_params, arrays)   # no requantizing
"""
from __future__ import annotations

import numpy as np

from .linear import QuantLinear

KINDS = ("int8",)          # what --quantize accepts
SCHEME = "q8_0"            # what a quantized checkpoint records (meta "quantized")


def is_quantized(model) -> bool:
    return getattr(model, "quantized", None) is not None


def kept_params(model) -> list[str]:
    """Names of the parameters a quantized model keeps in float32: those that share no memory
    with any matrix of inference_matrices() (norm gains, biases, position tables)."""
    mats = [w for w, _ in model.inference_matrices().values()]
    return [k for k, p in model.params.items() if not any(np.may_share_memory(p, w) for w in mats)]


def check_quantizable(model) -> None:
    """ValueError naming the first matrix whose input dimension is not a multiple of 32."""
    for name, (w, _) in model.inference_matrices().items():
        if w.shape[1] % 32:
            raise ValueError(f"cannot quantize to int8: matrix {name!r} has {w.shape[1]} inputs, not a multiple "
                             f"of 32 (Q8_0 blocks); run this model in float32 (without --quantize)")


def quantize_model(model):
    """A new model of the same family and config whose matrices are Q8_0 (quantized from the
    float32 ones, round to nearest, one scale per 32 inputs); ValueError for a size that cannot."""
    if is_quantized(model):
        return model
    check_quantizable(model)
    new = type(model)(model.config, init=False)
    for name in kept_params(model):
        new.params[name][...] = model.params[name]
    new.quantized = {name: _quantize_in_rows(w, b) for name, (w, b) in model.inference_matrices().items()}
    return new


def quantize_tensors(Model, config, read):
    """quantize_model(Model(config) loaded with every parameter), built one matrix at a time:
    read(name, out) fills `out`, a float32 array of the parameter's shape, with the parameter
    `name` (e.g. straight from a file, with no copy in between). Each matrix is assembled in a
    temporary float32 array laid out as its span of the parameter buffer (its members' views
    rebased onto it), quantized and dropped, so the float32 model is never whole in memory.
    Largest first: the peak is then the largest matrix in float32 beside little int8 (for
    GPT-2-small the tied token table, 154 MB, before the other 100 MB of int8 exist), not beside
    nearly all of it. Same arrays as quantize_model, bit for bit."""
    from numpy.lib.array_utils import byte_bounds
    from numpy.lib.stride_tricks import as_strided
    model = Model(config, init=False)                  # float matrices stay untouched zeros
    check_quantizable(model)
    kept = kept_params(model)
    for name in kept:
        read(name, model.params[name])
    mats = model.inference_matrices()
    quantized = {}
    for mat in sorted(mats, key=lambda k: -mats[k][0].size):
        w, b = mats[mat]
        lo, hi = byte_bounds(w)
        span = np.empty((hi - lo) // 4, np.float32)    # the matrix's bytes of params_memory

        def rebased(view):                             # `view`, a view of params_memory, on span
            start = (view.__array_interface__["data"][0] - lo) // 4
            return as_strided(span[start:], shape=view.shape, strides=view.strides)
        for name, p in model.params.items():
            if name not in kept and np.may_share_memory(p, w):
                read(name, rebased(p))
        quantized[mat] = _quantize_in_rows(rebased(w), b)
        del span
    model.quantized = {mat: quantized[mat] for mat in mats}   # the model's own order
    return model


def _quantize_in_rows(w: np.ndarray, bias, rows: int = 512) -> QuantLinear:
    """QuantLinear.from_out_in(w, bias), quantizing `rows` rows at a time (rows are independent),
    so the temporaries stay small beside a large embedding: quantize_q8_0 makes about five
    float32 arrays of its input's size (1.5 MB each at 512 x 768, 12.6 MB at 4096 x 768)."""
    from .reference import quantize_q8_0
    q = np.empty(w.shape, np.int8)                     # (O, C)
    d = np.empty((w.shape[0], w.shape[1] // 32), np.float32)
    for r in range(0, w.shape[0], rows):
        q[r:r + rows], d[r:r + rows] = quantize_q8_0(w[r:r + rows])
    return QuantLinear(q, d, bias)


def quantized_arrays(model) -> dict[str, np.ndarray]:
    """The int8 blocks, scales and biases of a quantized model by "<matrix name>.q" etc."""
    out: dict[str, np.ndarray] = {}
    for name, layer in model.quantized.items():
        out.update(layer.arrays(name))
    return out


def model_from_quantized(Model, config, params: dict[str, np.ndarray], arrays: dict[str, np.ndarray]):
    """A quantized model from its kept float32 params and its Q8_0 arrays (quantized_arrays'
    layout); ValueError naming the first missing, unexpected or mis-shaped entry."""
    model = Model(config, init=False)                  # float matrices stay untouched zeros
    kept = kept_params(model)
    missing = [k for k in kept if k not in params]
    if missing:
        raise ValueError(f"weight {missing[0]!r} is missing")
    extra = sorted(set(params) - set(kept))
    if extra:
        raise ValueError(f"weight {extra[0]!r} is not a float32 weight of an int8 model")
    for k in kept:
        if params[k].shape != model.params[k].shape:
            raise ValueError(f"weight {k!r} has shape {params[k].shape}, the model needs {model.params[k].shape}")
        model.params[k][...] = params[k]
    mats = model.inference_matrices()
    names = {k.rsplit(".", 1)[0] for k in arrays}
    extra = sorted(names - set(mats))
    if extra:
        raise ValueError(f"int8 weight {extra[0]!r} is not part of this model")
    quantized = {}
    for name, (w, b) in mats.items():
        layer = QuantLinear.from_arrays(arrays, name)          # ValueError naming a missing entry
        if layer.shape != w.shape:
            raise ValueError(f"int8 weight {name!r} has shape {layer.shape}, the model needs {w.shape}")
        if (layer.bias is None) != (b is None):
            raise ValueError(f"int8 weight {name!r} {'lacks' if layer.bias is None else 'has'} a bias, "
                             f"which this model {'needs' if layer.bias is None else 'does not have'}")
        if layer.bias is not None and not np.isfinite(layer.bias).all():
            raise ValueError(f"int8 weight {name!r} has a bias holding NaN or infinite values")
        quantized[name] = layer
    model.quantized = quantized
    return model
