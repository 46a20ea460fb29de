"""Export for deployment, the neutral part: which model, its probe batch, the artifact's verification, the table.

A task describes its inference model as an :class:`ExportSource`: the layers as neutral ops over its canonical
weights (:func:`cnn_ops`, :func:`mlp_ops`), the names of its input and output, a probe batch of the run's own
data and, per backend, that backend's own output on it (the run evaluated through dualkit's usual path). A
backend's ``export`` module (backends/torch/export.py, backends/tf/export.py) turns the ops into a model of
standard framework layers, writes it in one of its formats and loads the artifact back in that format's
runtime. :func:`export_run` (``dualkit export``) writes one artifact and verifies it three ways: the artifact
in its runtime, the backend that made it, and the other backend (its ONNX file in onnxruntime for an ONNX
export, its own output otherwise); :func:`export_checks` (the ``export`` parity level) exports every format from
both backends.

Every artifact is float32 with a dynamic batch dimension; images are NHWC (core's layout) in every format but
the ``.pt`` state dict, whose rebuilt ``torch.nn.Sequential`` takes NCHW (torch has no permute module).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core import registry
from dualkit.core.batches import Normalizer
from dualkit.core.datasets import Dataset
from dualkit.core.errors import BackendError, DataError, RunError
from dualkit.core.runs import RunLock, require_run_dir, write_json
from dualkit.core.specs import ModelSpec, QNetSpec
from dualkit.core.weights import feature_grid
from dualkit.tasks.base import ExportReport
from dualkit.tasks.parity import BACKENDS, Check, bound

OPSET = 18  # the ONNX opset of both exporters (torch's dynamo exporter and tf2onnx)
# format -> the backends that write it; its file suffix ("" for a folder); the runtime that verifies it
FORMATS: dict[str, tuple[str, ...]] = {
    "onnx": ("torch", "tf"),
    "savedmodel": ("tf",),
    "pt2": ("torch",),
    "keras": ("tf",),
    "pt": ("torch",),
}
SUFFIX = {"onnx": ".onnx", "savedmodel": "", "pt2": ".pt2", "keras": ".keras", "pt": ".pt"}
RUNTIME = {
    "onnx": "onnxruntime",
    "savedmodel": "tf.saved_model.load",
    "pt2": "torch.export.load",
    "keras": "keras.saving.load_model",
    "pt": "torch.load(weights_only=True)",
}
# the packages an ONNX export needs beyond the framework: its exporter, and onnxruntime to verify it
ONNX_NEEDS = {"torch": ("onnx", "onnxscript", "onnxruntime"), "tf": ("onnx", "tf2onnx", "onnxruntime")}
ONNX_INSTALL = "pip install 'dualkit[onnx]'"
EXPORT_DIR = "exports"  # in the run folder: default artifacts and the verification records
PROBE_SIZE = 64  # inputs of the probe batch

Op = tuple[str, dict[str, Any]]


# -- the inference model as neutral ops -----------------------------------------------------------------
def cnn_ops(model: ModelSpec, image_shape: tuple[int, int, int], head: bool) -> list[Op]:
    """The CNN in eval mode as ops over canonical names: the encoder's blocks, then the classifier's head
    (``head``) or global average pooling (the encoder's features). Dropout is the identity at inference.

    Ops: ``conv3x3`` (name, cin, cout, bias), ``batchnorm`` (name, channels, eps: running statistics),
    ``relu``, ``tanh``, ``maxpool2``, ``gap``, ``flatten`` (h, w, c: canonical H, W, C order), ``dense``
    (name, fan_in, width). Canonical layouts: conv (out, in, kh, kw), dense (out, in).
    """
    ops: list[Op] = []
    cin = image_shape[2]
    for b, cout in enumerate(model.channels):
        for c in range(model.convs_per_block):
            prefix = f"encoder.block{b}"
            ops.append(
                ("conv3x3", {"name": f"{prefix}.conv{c}", "cin": cin, "cout": cout, "bias": not model.batchnorm})
            )
            if model.batchnorm:
                ops.append(("batchnorm", {"name": f"{prefix}.bn{c}", "channels": cout, "eps": model.bn_eps}))
            if c < model.convs_per_block - 1:
                ops.append(("relu", {}))
            cin = cout
        ops += [("maxpool2", {}), ("relu", {})]
    if not head:
        return ops + [("gap", {})]
    h, w = feature_grid(model, image_shape)
    if model.head == "flatten":
        ops.append(("flatten", {"h": h, "w": w, "c": cin}))
        fan_in = h * w * cin
    else:
        ops.append(("gap", {}))
        fan_in = cin
    for i, width in enumerate(model.hidden):
        ops += [("dense", {"name": f"head.fc{i}", "fan_in": fan_in, "width": width}), ("relu", {})]
        fan_in = width
    return ops + [("dense", {"name": "head.out", "fan_in": fan_in, "width": model.num_classes})]


def mlp_ops(qnet: QNetSpec, obs_dim: int, num_actions: int, prefix: str) -> list[Op]:
    """The Q-network MLP as ops over its canonical names (``prefix.fc{i}``, ``prefix.out``)."""
    ops: list[Op] = []
    fan_in = obs_dim
    for i, width in enumerate(qnet.hidden):
        ops += [("dense", {"name": f"{prefix}.fc{i}", "fan_in": fan_in, "width": width}), (qnet.activation, {})]
        fan_in = width
    return ops + [("dense", {"name": f"{prefix}.out", "fan_in": fan_in, "width": num_actions})]


@dataclass
class ExportSource:
    """What a task hands the driver: its inference model, probe batch and the backends' own outputs."""

    task: str
    trained_in: str  # the backend that trained the run (the default exporter where it makes the format)
    ops: list[Op]
    weights: dict[str, np.ndarray]  # canonical names and layouts, any float dtype (exported as float32)
    input_shape: tuple[int, ...]  # one example's shape (images: H, W, C)
    input_name: str
    output_name: str
    probe: np.ndarray  # float32 inputs from the run's own data (images: normalised, NHWC)
    reference: Callable[[str], np.ndarray]  # backend name -> that backend's dualkit output on the probe
    predicted: str | None  # what argmax of the output means ("classes", "actions"); None: no argmax
    metadata: dict[str, Any] = field(default_factory=dict)  # written into the artifact where the format has room
    _outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def output(self, backend: str) -> np.ndarray:
        """``reference(backend)``, computed once per backend (each call builds the run's model in the backend)."""
        if backend not in self._outputs:
            self._outputs[backend] = np.asarray(self.reference(backend))
        return self._outputs[backend]


# -- probe batches ----------------------------------------------------------------------------------------
def probe_images(data: Dataset) -> np.ndarray:
    """The probe batch of an image run: its first PROBE_SIZE test images (uint8 NHWC), else validation or
    training images where the test split is empty."""
    for x in (data.x_test, data.x_val, data.x_train):
        if len(x):
            return x[:PROBE_SIZE]
    raise DataError("the run's data has no images to probe the export with")


def image_metadata(normalizer: Normalizer, classes: list[Any] | None) -> dict[str, Any]:
    """What a user of an image model's artifact needs besides the file: how to normalise its input."""
    meta: dict[str, Any] = {
        "input": "float32 images normalised per channel: (x / 255 - mean) / std",
        "normalizer": normalizer.to_dict(),
    }
    if classes is not None:
        meta["classes"] = [str(c) for c in classes]
    return meta


def spread(x: np.ndarray, n: int = PROBE_SIZE) -> np.ndarray:
    """At most ``n`` rows of ``x``, evenly spaced (first and last included)."""
    if len(x) <= n:
        return x
    return x[np.linspace(0, len(x) - 1, n).round().astype(int)]


# -- helpers --------------------------------------------------------------------------------------------
def missing_packages(fmt: str, backend: str) -> list[str]:
    """The packages, beyond the framework, that exporting ``fmt`` from ``backend`` and verifying it need."""
    needs = ONNX_NEEDS[backend] if fmt == "onnx" else ()
    return [p for p in needs if importlib.util.find_spec(p) is None]


def require_exporter(fmt: str, backend: str) -> None:
    """A one-line error naming what to install when the exporter or its runtime is missing."""
    missing = missing_packages(fmt, backend)
    if missing:
        raise BackendError(
            f"exporting {fmt} from {backend} needs {', '.join(missing)}, not installed; install with: {ONNX_INSTALL}"
        )


def resolve_backend(fmt: str, backend: str | None, trained_in: str) -> str:
    """The backend that writes ``fmt``: the one named, else the run's own if it writes the format, else the
    format's only one."""
    if fmt not in FORMATS:
        raise RunError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
    makers = FORMATS[fmt]
    if backend is None:
        return trained_in if trained_in in makers else makers[0]
    name = registry.resolve_name(backend)
    if name not in makers:
        raise RunError(f"--format {fmt} is written by {' or '.join(makers)}, not {name}; drop --backend or change it")
    return name


def default_out(run_dir: Path, fmt: str, backend: str) -> Path:
    stem = "savedmodel" if fmt == "savedmodel" else "model"
    return Path(run_dir) / EXPORT_DIR / f"{stem}-{backend}{SUFFIX[fmt]}"


def finish_onnx(path: Path, source: ExportSource, backend: str, opset: int) -> None:
    """Give an ONNX file the source's input and output names, a named dynamic batch dimension and the
    source's metadata (tf2onnx names them after TF's graph: ``Identity:0``, ``unk__12``)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    renames = {graph.input[0].name: source.input_name, graph.output[0].name: source.output_name}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in (graph.input[0], graph.output[0]):
        value.name = renames[value.name]
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    meta = {
        "dualkit.task": source.task,
        "dualkit.exported_from": backend,
        "dualkit.opset": str(opset),
        **{f"dualkit.{k}": json.dumps(v) for k, v in source.metadata.items()},
    }
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """An ONNX file run by onnxruntime (CPU) on ``x``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = registry.thread_count()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def write_artifact(source: ExportSource, fmt: str, backend: str, path: Path, device: str) -> float:
    """Write ``fmt`` from ``backend`` to ``path`` (a file, or a folder for a SavedModel; a fresh path: callers
    write into a temp folder and rename). Returns the seconds the exporter took."""
    require_exporter(fmt, backend)
    ex = registry.get_backend(backend, device).export
    model = ex.inference_model(source.ops, source.input_shape, source.weights, source.input_name, source.output_name)
    t0 = time.perf_counter()
    ex.save(model, fmt, Path(path), OPSET, source.metadata)
    seconds = time.perf_counter() - t0
    if fmt == "onnx":
        finish_onnx(Path(path), source, backend, OPSET)
    return seconds


def move_into_place(part: Path, out: Path) -> None:
    """Rename a finished artifact (file or folder) to ``out``, replacing what is there (a file atomically)."""
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    os.replace(part, out)


def run_artifact(fmt: str, backend: str, path: Path, x: np.ndarray, device: str) -> np.ndarray:
    """The artifact's output on ``x`` in its runtime (onnxruntime for ONNX, the backend's loader otherwise)."""
    if fmt == "onnx":
        return run_onnx(path, x)
    return np.asarray(registry.get_backend(backend, device).export.load(fmt, path)(x))


@dataclass
class Output:
    """One of the compared outputs: what made it, where it ran, its values on the probe batch."""

    label: str
    runtime: str
    values: np.ndarray
    seconds: float | None = None  # the export time, for an artifact


def compare(a: Output, b: Output, predicted: str | None, device: str) -> dict[str, Any]:
    """One row of the verification: max abs difference and identical argmax, against the export bound."""
    diff = float(np.abs(a.values.astype(np.float64) - b.values.astype(np.float64)).max()) if a.values.size else 0.0
    same = bool(np.array_equal(a.values.argmax(-1), b.values.argmax(-1))) if predicted else None
    limit = bound("export", "float32", device)
    ok = bool(np.isfinite(diff) and diff <= limit and same is not False)
    return {
        "output": a.label,
        "runtime": a.runtime,
        "vs": b.label,
        "max_abs_diff": diff,
        "identical": same,
        "bound": limit,
        "passed": ok,
    }


# -- dualkit export -------------------------------------------------------------------------------------
def export_run(
    source: ExportSource,
    run_dir: Path,
    fmt: str,
    backend: str | None,
    out: Path | None,
    device: str = "cpu",
    overwrite: bool = False,
) -> ExportReport:
    """``dualkit export``: write the run's inference model as ``fmt`` from ``backend`` and verify it.

    Three outputs on the probe batch: the artifact in its runtime, the exporting backend (the run through
    dualkit), and the other backend (its own ONNX file, exported alongside into a temp folder, for an ONNX
    export; its dualkit output otherwise; left out, with a note, where it is not installed). Every pair must
    agree within the export bound with identical predicted classes or actions. The rows and the artifact's
    facts go to RUN/exports/<format>-<backend>.json. Holds the run folder's lock while it writes there.
    """
    run_dir = require_run_dir(Path(run_dir))
    maker = resolve_backend(fmt, backend, source.trained_in)
    out = Path(out) if out is not None else default_out(run_dir, fmt, maker)
    if fmt != "savedmodel" and out.suffix != SUFFIX[fmt]:
        raise RunError(f"--out for --format {fmt} must end in {SUFFIX[fmt]}, got {out.name!r}")
    if out.exists() and not overwrite:
        raise RunError(f"{out} already exists; choose another --out or pass --overwrite")
    require_exporter(fmt, maker)
    registry.get_backend(maker, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The artifact is written and verified under a temp name beside ``out``, then renamed: an export that
    # fails half-way leaves nothing (and an old artifact stays as it was).
    with RunLock(run_dir, create=False), tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        part = Path(tmp) / f"artifact{SUFFIX[fmt]}"
        seconds = write_artifact(source, fmt, maker, part, device)
        outputs = [
            Output(f"{fmt} from {maker}", RUNTIME[fmt], run_artifact(fmt, maker, part, source.probe, device), seconds),
            Output(f"{maker} (dualkit)", f"{maker} backend", source.output(maker)),
        ]
        notes: list[str] = []
        other = next(b for b in BACKENDS if b != maker)
        if not registry.is_installed(other):
            notes.append(f"not compared with {other}: {registry.BACKENDS[other][1]} is not installed")
        elif fmt == "onnx" and missing_packages("onnx", other):
            notes.append(f"not compared with onnx from {other}: {', '.join(missing_packages('onnx', other))} missing")
        elif fmt == "onnx":
            path = Path(tmp) / f"other-{other}.onnx"
            other_s = write_artifact(source, "onnx", other, path, device)
            outputs.append(Output(f"onnx from {other}", RUNTIME["onnx"], run_onnx(path, source.probe), other_s))
        else:
            outputs.append(Output(f"{other} (dualkit)", f"{other} backend", source.output(other)))
        rows = [compare(outputs[0], outputs[1], source.predicted, device)]
        if len(outputs) == 3:
            rows += [
                compare(outputs[0], outputs[2], source.predicted, device),
                compare(outputs[2], outputs[1], source.predicted, device),
            ]
        record = {
            "task": source.task,
            "format": fmt,
            "backend": maker,
            "artifact": str(out),
            "opset": OPSET if fmt == "onnx" else None,
            "input": {
                "name": source.input_name,
                "shape": ["batch", *input_shape(fmt, source.input_shape)],
                "layout": input_layout(fmt, source.input_shape),
                "dtype": "float32",
            },
            "output": {"name": source.output_name, "predicted": source.predicted},
            "probe_size": len(source.probe),
            "export_s": {o.label: o.seconds for o in outputs if o.seconds is not None},
            "metadata": source.metadata,
            "rows": rows,
            "notes": notes,
            "passed": all(r["passed"] for r in rows),
        }
        move_into_place(part, out)
        record_path = run_dir / EXPORT_DIR / f"{fmt}-{maker}.json"
        write_json(record_path, record)
    return ExportReport(
        headers=[
            "output",
            "runtime",
            "compared with",
            "max abs diff",
            f"identical {source.predicted or 'argmax'}",
            "bound",
            "verdict",
        ],
        rows=[
            [
                r["output"],
                r["runtime"],
                r["vs"],
                r["max_abs_diff"],
                "-" if r["identical"] is None else r["identical"],
                r["bound"],
                "PASS" if r["passed"] else "FAIL",
            ]
            for r in rows
        ],
        artifact=out,
        record=record_path,
        notes=[describe(record)] + notes,
        ok=record["passed"],
    )


def input_shape(fmt: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """One input's shape in the artifact: images H, W, C (C, H, W for the rebuilt .pt Sequential)."""
    return (shape[2], shape[0], shape[1]) if fmt == "pt" and len(shape) == 3 else tuple(shape)


def input_layout(fmt: str, input_shape: tuple[int, ...]) -> str:
    """What the artifact's input is: NHWC images (NCHW for the rebuilt .pt Sequential), or (N, features)."""
    if len(input_shape) != 3:
        return "NC"
    return "NCHW" if fmt == "pt" else "NHWC"


def describe(record: dict[str, Any]) -> str:
    """One line: the artifact's input and output, opset, probe size and export times."""
    inp, outp = record["input"], record["output"]
    opset = f", opset {record['opset']}" if record["opset"] else ""
    times = ", ".join(f"{k} {v:.2f} s" for k, v in record["export_s"].items())
    return (
        f"{record['format']} from {record['backend']}{opset}: input {inp['name']!r} float32 "
        f"{inp['layout']} ({', '.join(map(str, inp['shape']))}) -> {outp['name']!r}; "
        f"probe {record['probe_size']} inputs of the run's own data; export {times}"
    )


# -- the export parity level ----------------------------------------------------------------------------
def export_checks(source: ExportSource, device: str = "cpu") -> list[Check]:
    """The ``export`` level: every format from every backend that writes it, each artifact in its runtime
    against its backend's dualkit output, and the two ONNX files against each other (max abs difference,
    identical argmax). A format whose exporter is not installed is a failing check that says what to install."""
    checks: list[Check] = []
    onnx_out: dict[str, np.ndarray] = {}
    limit = bound("export", "float32", device)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, makers in FORMATS.items():
            for maker in makers:
                name = f"{fmt} ({maker}) vs {maker}"
                missing = missing_packages(fmt, maker)
                if missing:
                    detail = f"not run: {', '.join(missing)} missing; {ONNX_INSTALL}"
                    checks.append(Check("export", name, float("nan"), limit, False, detail))
                    continue
                path = Path(tmp) / f"{fmt}-{maker}{SUFFIX[fmt]}"
                seconds = write_artifact(source, fmt, maker, path, device)
                got = run_artifact(fmt, maker, path, source.probe, device)
                if fmt == "onnx":
                    onnx_out[maker] = got
                row = compare(
                    Output(name, RUNTIME[fmt], got),
                    Output(maker, "", source.output(maker)),
                    source.predicted,
                    device,
                )
                checks.append(_check(name, row, f"{RUNTIME[fmt]}; export {seconds:.2f} s", source))
        if len(onnx_out) == 2:
            a, b = (Output(f"onnx ({m})", "onnxruntime", onnx_out[m]) for m in BACKENDS)
            checks.append(
                _check("onnx (torch) vs onnx (tf)", compare(a, b, source.predicted, device), "onnxruntime", source)
            )
    return checks


def _check(name: str, row: dict[str, Any], detail: str, source: ExportSource) -> Check:
    same = "" if row["identical"] is None else f"; identical {source.predicted}: {row['identical']}"
    what = f"{source.output_name} of {len(source.probe)} probe inputs, max abs diff"
    return Check("export", name, row["max_abs_diff"], row["bound"], row["passed"], f"{what}{same}; {detail}")
