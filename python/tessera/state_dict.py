"""Between a PyTorch ``state_dict`` and Tessera's named float32 tensors.

A client trains a ``torch.nn`` model from the global model and sends the
difference of its float parameters and buffers, ``local - global``, as its
update. Integer buffers (batch-norm's ``num_batches_tracked``, any
embedding index table) are not averaged: they stay local, are never sent,
and are kept as they are when the global model is loaded back. The names
and layouts are PyTorch's (``fc1.weight`` as ``[out, in]``), which are the
server's too, so the global ``state_dict`` comes back with the same names
and shapes.

Nothing here imports torch: tensors are recognised by their methods
(``detach``, ``new_tensor``), so the same functions work on NumPy arrays
and the tests run without PyTorch.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from tessera.errors import InvalidInput

__all__ = ["to_numpy", "split_state", "float_update", "load_global"]


def to_numpy(value: Any) -> np.ndarray:
    """A tensor (torch, on any device) or array as a NumPy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def split_state(state: Mapping[str, Any]) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Splits a ``state_dict`` into the float tensors the federation
    averages (as float32 NumPy arrays: an ``initial_model`` for
    :class:`tessera.Server`) and the integer entries that stay local."""
    floats: Dict[str, np.ndarray] = {}
    local: Dict[str, Any] = {}
    for name, value in state.items():
        array = to_numpy(value)
        if np.issubdtype(array.dtype, np.floating):
            floats[name] = np.ascontiguousarray(array, dtype=np.float32)
        else:
            local[name] = value
    return floats, local


def float_update(local: Mapping[str, Any], global_tensors: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """``local - global`` for every tensor of the global model, by name:
    the update :meth:`tessera.Client.participate` takes. Integer entries of
    ``local`` are left out (they stay local).

    Raises:
        InvalidInput: a global tensor the local state lacks, or of another
            shape (another architecture).
    """
    update: Dict[str, np.ndarray] = {}
    for name, g in global_tensors.items():
        if name not in local:
            raise InvalidInput(f"the local state has no tensor '{name}' (the global model's tensors: {list(global_tensors)})")
        value = to_numpy(local[name]).astype(np.float32)
        if value.shape != g.shape:
            raise InvalidInput(f"tensor '{name}' is {value.shape} locally, {g.shape} in the global model")
        update[name] = value - g
    return update


def load_global(local: Mapping[str, Any], global_tensors: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    """A ``state_dict`` with the global model's tensors in ``local``'s
    types, dtypes and devices (``model.load_state_dict(...)`` takes it),
    and ``local``'s integer entries as they are.

    Raises:
        InvalidInput: a global tensor the local state lacks, or of another
            shape.
    """
    merged: Dict[str, Any] = dict(local)
    for name, g in global_tensors.items():
        if name not in local:
            raise InvalidInput(f"the local state has no tensor '{name}'")
        template = local[name]
        if tuple(template.shape) != tuple(g.shape):
            raise InvalidInput(f"tensor '{name}' is {tuple(template.shape)} locally, {g.shape} in the global model")
        if hasattr(template, "new_tensor"):
            merged[name] = template.new_tensor(g)  # torch: same dtype and device
        else:
            merged[name] = np.asarray(g, dtype=np.asarray(template).dtype)
    return merged
