"""The PyTorch example's conversion code, exercised with NumPy arrays and
a stand-in for torch tensors."""

from __future__ import annotations

import numpy as np
import pytest

import tessera
from tessera.state_dict import float_update, load_global, split_state


class FakeTensor:
    """What the helpers use of a torch.Tensor: detach().cpu().numpy(),
    shape, and new_tensor keeping dtype (and, in torch, device)."""

    def __init__(self, array):
        self.array = np.asarray(array)
        self.shape = self.array.shape

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.array

    def new_tensor(self, data):
        return FakeTensor(np.asarray(data, dtype=self.array.dtype))


def state():
    return {
        "bn.num_batches_tracked": FakeTensor(np.array(7, np.int64)),
        "bn.running_mean": FakeTensor(np.zeros(3, np.float32)),
        "fc1.bias": FakeTensor(np.ones(3, np.float32)),
        "fc1.weight": FakeTensor(np.arange(6, dtype=np.float32).reshape(3, 2)),
    }


def test_float_tensors_are_federated_and_integer_buffers_stay_local():
    floats, local = split_state(state())
    assert sorted(floats) == ["bn.running_mean", "fc1.bias", "fc1.weight"]
    assert floats["fc1.weight"].shape == (3, 2) and floats["fc1.weight"].dtype == np.float32
    assert list(local) == ["bn.num_batches_tracked"]


def test_the_update_is_local_minus_global_by_name():
    floats, _ = split_state(state())
    trained = state()
    trained["fc1.weight"] = FakeTensor(trained["fc1.weight"].array + 0.5)
    trained["bn.num_batches_tracked"] = FakeTensor(np.array(9, np.int64))
    update = float_update(trained, floats)
    assert sorted(update) == sorted(floats)
    np.testing.assert_array_equal(update["fc1.weight"], np.full((3, 2), 0.5, np.float32))
    np.testing.assert_array_equal(update["fc1.bias"], np.zeros(3, np.float32))


def test_the_global_model_loads_back_with_the_same_names_layouts_and_dtypes():
    floats, _ = split_state(state())
    new_global = {k: v + 1 for k, v in floats.items()}
    local = state()
    merged = load_global(local, new_global)
    assert list(merged) == list(local)
    assert isinstance(merged["fc1.weight"], FakeTensor)
    np.testing.assert_array_equal(merged["fc1.weight"].array, floats["fc1.weight"] + 1)
    # The integer buffer is the local one, untouched.
    assert merged["bn.num_batches_tracked"] is local["bn.num_batches_tracked"]
    # Plain NumPy states work the same way.
    plain = {k: v.array for k, v in state().items()}
    merged = load_global(plain, new_global)
    assert merged["fc1.bias"].dtype == np.float32 and merged["bn.num_batches_tracked"] == 7


def test_another_architecture_is_refused_by_name():
    floats, _ = split_state(state())
    other = state()
    del other["fc1.bias"]
    with pytest.raises(tessera.InvalidInput, match="no tensor 'fc1.bias'"):
        float_update(other, floats)
    other = state()
    other["fc1.weight"] = FakeTensor(np.zeros((2, 3), np.float32))
    with pytest.raises(tessera.InvalidInput, match=r"'fc1.weight' is \(2, 3\) locally"):
        load_global(other, floats)
