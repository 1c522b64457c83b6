"""The weights of a Hugging Face folder: `model.safetensors`, or the shards that
`model.safetensors.index.json` names.

The index is {"metadata": {...}, "weight_map": {tensor name: shard file name}}. Every shard is
opened (its header read) up front, so a missing or corrupt shard is reported before any tensor is
converted; tensors are then read one at a time with file reads, each straight into the float32
array that keeps it (F32, F16, BF16 on disk; nothing is mapped), so peak memory stays near the
float32 model's size.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import GPT2Error
from .safetensors import SafetensorsFile

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class HFWeights:
    """Tensor name -> float32 array over one or more safetensors files.

        w = open_weights(folder)
        w.keys()           # tensor names (file order, shard by shard)
        w.shape(name), w.dtype(name)
        w.get(name)        # np.ndarray float32, C-contiguous, owns its data
        w.read_into(name, out)  # into a float32 array the caller owns (a model's buffer)
        w.close()
    """

    def __init__(self, files: dict[str, SafetensorsFile], where: dict[str, str]) -> None:
        self.files = files                  # shard file name -> open file
        self._where = where                 # tensor name -> shard file name

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def _file(self, name: str) -> SafetensorsFile:
        if name not in self._where:
            raise GPT2Error(f"the weights have no tensor {name!r}")
        return self.files[self._where[name]]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(name).shape(name)

    def dtype(self, name: str) -> str:
        return self._file(name).dtype(name)

    def get(self, name: str) -> np.ndarray:
        return self._file(name).get(name)

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Tensor `name` read straight into out (float32, its shape), without mapping the file
        (SafetensorsFile.read_into)."""
        self._file(name).read_into(name, out)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def open_weights(folder: str | os.PathLike) -> HFWeights:
    """The weights of folder: model.safetensors when present, else the sharded index.
    GPT2Error (one line) when neither exists, the index is malformed, or a shard is missing."""
    folder = Path(folder)
    if os.path.lexists(folder / SINGLE):
        f = SafetensorsFile(folder / SINGLE)
        return HFWeights({SINGLE: f}, {name: SINGLE for name in f.keys()})
    index = folder / INDEX
    if not os.path.lexists(index):
        raise GPT2Error(f"{folder} has neither {SINGLE} nor {INDEX}; download the model's weights into it")
    try:
        obj = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GPT2Error(f"{index} is not a readable JSON file ({e}); download it again") from None
    weight_map = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise GPT2Error(f"{index} must hold a \"weight_map\" object of tensor name -> shard file; download it again")
    shards = list(dict.fromkeys(weight_map.values()))       # shard names, first-seen order
    for shard in shards:
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise GPT2Error(f"{index} names shard {shard!r}, which is not a file name in the folder")
        if not os.path.lexists(folder / shard):
            raise GPT2Error(f"{index} names shard {shard}, which is missing from {folder}; "
                            "download every model-*.safetensors file of the model")
    files = {shard: SafetensorsFile(folder / shard) for shard in shards}
    for name, shard in weight_map.items():
        if name not in files[shard]:
            raise GPT2Error(f"{index} puts tensor {name!r} in {shard}, which has no such tensor; "
                            "the shards and the index come from different downloads")
    # tensors in each shard's own order, shard by shard (the order of a single file)
    where = {name: shard for shard in shards for name in files[shard].keys() if weight_map.get(name) == shard}
    return HFWeights(files, where)
