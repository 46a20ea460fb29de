"""Export in PyTorch: the inference model from standard ``torch.nn`` layers, written as ONNX (the dynamo
exporter), a ``torch.export`` program (``.pt2``) or a state dict (``.pt``), and loaded back in torch.

The model is built from tasks/export.py's neutral ops over canonical weights: an ``nn.Sequential`` of
standard modules, so that a ``.pt`` file, which holds its layers as (``torch.nn`` class name, arguments) and
its state dict, rebuilds in any Python with torch and nothing else::

    payload = torch.load(path, weights_only=True)
    body = torch.nn.Sequential(*(getattr(torch.nn, name)(**args) for name, args in payload["layers"]))
    body.load_state_dict(payload["state_dict"])
    body.eval()  # images: body(x_nhwc.permute(0, 3, 1, 2)), the Sequential takes NCHW

ONNX and ``.pt2`` take NHWC images (core's layout) through a wrapper that permutes first.
Mirrors backends/tf/export.py name for name (see tests/backends/test_mirror.py).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dualkit.core.errors import BackendError
from dualkit.core.runs import atomic_write_bytes

FORMATS = ("onnx", "pt2", "pt")
PT_FORMAT = "dualkit-export/1"  # the ``format`` entry of a ``.pt`` payload
ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh"}


class _Exported(nn.Module):
    """``body`` (an nn.Sequential of standard modules) on NHWC images, permuted to NCHW first, or on vectors."""

    def __init__(self, layers: list[list[Any]], input_shape: tuple[int, ...], input_name: str, output_name: str):
        super().__init__()
        self.body = nn.Sequential(*(getattr(nn, name)(**args) for name, args in layers))
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.images = len(input_shape) == 3
        self.input_name, self.output_name = input_name, output_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 3, 1, 2) if self.images else x)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def inference_model(
    ops: list[tuple[str, dict[str, Any]]],
    input_shape: tuple[int, ...],
    weights: dict[str, np.ndarray],
    input_name: str,
    output_name: str,
) -> nn.Module:
    """The ops (tasks/export.py) as a float32, eval-mode module of standard torch.nn layers with the
    canonical weights; it takes NHWC images (``input_shape`` of 3) or vectors."""
    layers: list[list[Any]] = []
    state: dict[str, torch.Tensor] = {}
    flat: tuple[int, int, int] | None = None  # (h, w, c) of a flatten the next dense reads in H, W, C order
    for op, args in ops:
        i = len(layers)
        if op == "conv3x3":
            layers.append(
                [
                    "Conv2d",
                    {
                        "in_channels": args["cin"],
                        "out_channels": args["cout"],
                        "kernel_size": 3,
                        "padding": 1,
                        "bias": args["bias"],
                    },
                ]
            )
            state[f"{i}.weight"] = _tensor(weights[f"{args['name']}.weight"])
            if args["bias"]:
                state[f"{i}.bias"] = _tensor(weights[f"{args['name']}.bias"])
        elif op == "batchnorm":
            layers.append(["BatchNorm2d", {"num_features": args["channels"], "eps": args["eps"]}])
            for part in ("weight", "bias", "running_mean", "running_var"):
                state[f"{i}.{part}"] = _tensor(weights[f"{args['name']}.{part}"])
            state[f"{i}.num_batches_tracked"] = torch.tensor(0)
        elif op in ACTIVATIONS:
            layers.append([ACTIVATIONS[op], {}])
        elif op == "maxpool2":
            layers.append(["MaxPool2d", {"kernel_size": 2}])
        elif op == "gap":
            layers += [["AdaptiveAvgPool2d", {"output_size": 1}], ["Flatten", {}]]
        elif op == "flatten":
            layers.append(["Flatten", {}])  # C, H, W order here: the next dense's columns are reordered to match
            flat = (args["h"], args["w"], args["c"])
        elif op == "dense":
            layers.append(["Linear", {"in_features": args["fan_in"], "out_features": args["width"]}])
            w = np.asarray(weights[f"{args['name']}.weight"])
            if flat is not None:
                h, wd, c = flat
                w = w.reshape(w.shape[0], h, wd, c).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
                flat = None
            state[f"{i}.weight"] = _tensor(w)
            state[f"{i}.bias"] = _tensor(weights[f"{args['name']}.bias"])
        else:
            raise ValueError(f"unknown export op {op!r}")
    model = _Exported(layers, input_shape, input_name, output_name)
    model.body.load_state_dict(state)
    return model.eval()


@contextmanager
def _quiet() -> Iterator[None]:
    """Hold back the exporters' chatter: torch.onnx logs a warning per torchvision op it cannot register
    (torchvision is not a dependency) and pytree deprecation warnings; errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _program(model: nn.Module) -> torch.export.ExportedProgram:
    """``torch.export`` of the model with a dynamic batch dimension (traced on a batch of 2: torch.export
    specialises a dimension seen as 1)."""
    example = torch.zeros((2, *model.input_shape), dtype=torch.float32)
    batch = torch.export.Dim("batch")
    return torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})


def save(model: nn.Module, fmt: str, path: Path, opset: int, metadata: dict[str, Any]) -> None:
    """Write ``model`` as ``fmt`` to ``path``: ``onnx`` (torch.onnx.export, dynamo, opset ``opset``; needs
    onnxscript), ``pt2`` (torch.export.save; ``metadata`` as the extra file ``dualkit.json``) or ``pt`` (the
    layers and state dict, loadable with ``torch.load(weights_only=True)``; ``metadata`` (JSON-like values)
    under ``meta``)."""
    path = Path(path)
    if fmt == "onnx":
        try:
            import onnxscript  # noqa: F401  (torch's ONNX exporter needs it but does not declare it)
        except ImportError:
            raise BackendError(
                "torch's ONNX exporter needs onnxscript, not installed; install with: pip install 'dualkit[onnx]'"
            ) from None
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                model,
                (torch.zeros((2, *model.input_shape), dtype=torch.float32),),
                str(path),
                dynamo=True,
                input_names=[model.input_name],
                output_names=[model.output_name],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    elif fmt == "pt2":
        with _quiet():
            program = _program(model)
            torch.export.save(program, str(path), extra_files={"dualkit.json": json.dumps(metadata)})
    elif fmt == "pt":
        payload = {
            "format": PT_FORMAT,
            "layers": model.layers,
            "state_dict": model.body.state_dict(),
            "input": {"name": model.input_name, "layout": "NCHW" if model.images else "NC"},
            "output": model.output_name,
            "meta": dict(metadata),  # JSON-like values only, which weights_only=True loads
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(path, buf.getvalue())
    else:
        raise BackendError(f"torch exports {', '.join(FORMATS)}, not {fmt!r}")


def load(fmt: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """An artifact written by :func:`save`, loaded by torch alone (no dualkit class is needed), as a
    function of float32 inputs (images NHWC) -> outputs."""
    if fmt == "pt2":
        module = torch.export.load(str(path)).module()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(_tensor(x)).numpy()

        return run
    if fmt == "pt":
        payload = torch.load(str(path), weights_only=True)
        body = nn.Sequential(*(getattr(nn, name)(**args) for name, args in payload["layers"]))
        body.load_state_dict(payload["state_dict"])
        body.eval()
        images = payload["input"]["layout"] == "NCHW"

        def run_pt(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                t = _tensor(x)
                return body(t.permute(0, 3, 1, 2) if images else t).numpy()

        return run_pt
    raise BackendError(f"torch loads {', '.join(f for f in FORMATS if f != 'onnx')} artifacts, not {fmt!r}")
