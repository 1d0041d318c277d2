"""Arrays of other libraries as NumPy views, without a copy: the DLPack path of every function.

The extension calls ``from_dlpack`` for an argument that is not a NumPy array but has
``__dlpack__`` (PyTorch tensors, JAX arrays, CuPy, ...); anything else goes through
``numpy.asarray`` (which takes ``__array__`` and the buffer protocol).

NumPy's DLPack import knows no bfloat16. For that dtype the producer's capsule is relabelled
as int16 of the same shape and strides before NumPy takes it, and the view is then given
``ml_dtypes.bfloat16``: still no copy, and the producer's deleter still runs when the view dies.
"""

from __future__ import annotations

import ctypes
from typing import Any

import ml_dtypes
import numpy as np

# DLDeviceType values that NumPy can read directly: kDLCPU, kDLCUDAHost (pinned host memory).
_HOST_DEVICES = {1, 3}
_DEVICE_NAMES = {2: "cuda", 4: "opencl", 7: "vulkan", 8: "metal", 10: "rocm", 13: "cuda_managed"}
# DLDataType codes.
_DL_INT, _DL_BFLOAT = 0, 4
# Offset of DLTensor.dtype in the legacy DLManagedTensor (it starts with the DLTensor):
# void *data; DLDevice device (2 x int32); int32 ndim; then DLDataType {uint8 code, bits;
# uint16 lanes}.
_DTYPE_OFFSET = ctypes.sizeof(ctypes.c_void_p) + 8 + 4

_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


class _Capsule:
    """Hands an already exported legacy capsule to ``numpy.from_dlpack``."""

    def __init__(self, capsule: Any, device: tuple[int, int]) -> None:
        self._capsule, self._device = capsule, device

    def __dlpack__(self, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._device


def from_dlpack(obj: Any, what: str) -> np.ndarray:
    """A NumPy view of `obj`'s memory; TypeError naming `what` when that cannot be."""
    try:
        device = tuple(obj.__dlpack_device__())
    except Exception as err:
        raise TypeError(f"{what}: could not read its DLPack device ({err})") from err
    if device[0] not in _HOST_DEVICES:
        name = _DEVICE_NAMES.get(device[0], f"DLPack device type {device[0]}")
        raise TypeError(
            f"{what} lives on {name}:{device[1]}; sce_rs computes on the CPU, so move it to "
            "host memory first (for example tensor.cpu())"
        )
    try:
        return np.from_dlpack(obj)
    except Exception as err:
        first = err
    try:
        capsule = obj.__dlpack__()
    except Exception as err:
        # PyTorch refuses to export a tensor that requires grad.
        raise TypeError(
            f"{what} could not be exported through DLPack: {err} (for autograd, use sce_rs.torch)"
        ) from err
    pointer = _get_pointer(capsule, b"dltensor")
    code, bits, lanes = (ctypes.c_uint8 * 2).from_address(pointer + _DTYPE_OFFSET)[:] + [
        ctypes.c_uint16.from_address(pointer + _DTYPE_OFFSET + 2).value
    ]
    if (code, bits, lanes) != (_DL_BFLOAT, 16, 1):
        raise TypeError(f"{what} could not be read through DLPack: {first}") from first
    ctypes.c_uint8.from_address(pointer + _DTYPE_OFFSET).value = _DL_INT
    return np.from_dlpack(_Capsule(capsule, device)).view(ml_dtypes.bfloat16)
