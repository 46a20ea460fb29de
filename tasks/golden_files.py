"""Golden files: a task's parity levels recorded on CPU by both backends, and one backend on any device checked
against the recording, level by level (``dualkit parity PRESET --record DIR`` / ``--against DIR``).

A recording is a folder:

- ``manifest.json``: format, preset, task, spec, seed, levels, dtypes, L4 length, where and with what it was
  recorded (versions, threads, processor per backend), the bounds, and every case (tasks/golden.py) with its
  inputs, outputs and how each output group is compared;
- ``inputs.safetensors``: every case's inputs, each distinct array stored once;
- ``outputs-torch.safetensors``, ``outputs-tf.safetensors``: each backend's CPU outputs of every case, and for float32
  cases with an envelope the gap that rounding alone made in that backend (its outputs from 1-ulp-moved weights
  against its own, per output group: ``<case>/ulp/<group>``, a number or a per-step series).

Checking one backend on a device against it, each case's outputs are compared with both recorded backends: with
the recording's own backend on the same kind of CPU (same versions, threads and processor) they must be
identical; otherwise the level's bounds apply (tasks/parity.py), ten times looser on a GPU, and float32 L4 keeps
its rounding-envelope verdict with the envelope recorded on CPU. On a GPU each case also runs on this machine's
CPU in the same backend (device parity: same weights and batches, per level).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core import checkpoint, registry
from dualkit.core.errors import CheckpointError, DualkitError, SpecError
from dualkit.core.exploration import q_margin
from dualkit.core.runs import read_json, write_json
from dualkit.core.specs import from_dict, to_dict
from dualkit.tasks.golden import WEIGHT_PREFIX, Arrays, Compare, GoldenCase, group_of
from dualkit.tasks.parity import (
    BACKENDS,
    BOUNDS,
    ENVELOPE_FACTOR,
    GPU_FACTOR,
    Check,
    bound,
    envelope_check,
    max_rel_diff,
    perturb_ulp,
    rel_gaps,
)

FORMAT = "dualkit-golden"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INPUTS_FILE = "inputs.safetensors"
RECORD_DEVICE = "cpu"
ULP = "ulp"  # the rounding envelope per output group: "<case id>/ulp/<group>"


def outputs_file(backend: str) -> str:
    return f"outputs-{backend}.safetensors"


# -- where a recording was made ------------------------------------------------------------------------------
def processor() -> str:
    """The CPU model (kernels, and so rounding, differ between processors)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _dualkit_version() -> str:
    try:
        return importlib.metadata.version("dualkit")
    except importlib.metadata.PackageNotFoundError:  # a source checkout run in place
        return "source checkout"


def environment(backend: str) -> dict[str, Any]:
    """What decides a backend's CPU numbers bit for bit: its versions, thread count and processor."""
    module = registry.get_backend(backend, RECORD_DEVICE)
    return {
        "versions": module.versions(),
        "threads": registry.thread_count(),
        "machine": platform.machine(),
        "processor": processor(),
    }


# -- recording ----------------------------------------------------------------------------------------------
@dataclass
class Recording:
    path: Path
    cases: int
    nbytes: int
    checks: list[Check]  # recorded tf against recorded torch: the levels' CPU verdicts
    seconds: float


def _case_id(i: int) -> str:
    return f"c{i:03d}"


def _input_key(a: np.ndarray) -> str:
    h = hashlib.sha1(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return "in/" + h.hexdigest()[:16]


def ulp_inputs(inputs: Arrays, seed: int) -> Arrays:
    """The case's inputs with its weights moved by one ulp (running statistics kept), as parity's envelope does."""
    moved = perturb_ulp({k: v for k, v in inputs.items() if k.startswith(WEIGHT_PREFIX)}, seed)
    return {**inputs, **moved}


def _prepare_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DualkitError(f"{out} is a file; name a folder for the golden files")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DualkitError(f"{out} holds other files; name an empty or new folder for the golden files")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # written last: a folder without it is no recording


def record(
    task: Any,
    spec: Any,
    preset: str,
    levels: list[str],
    dtypes: list[str],
    out: Path,
    l4_steps: int | None = None,
) -> Recording:
    """Record ``task``'s golden cases for ``levels`` x ``dtypes`` into ``out`` (a new folder, or one holding an
    older recording, which is replaced), computing every case on CPU in both backends."""
    t_start = time.perf_counter()
    out = Path(out)
    cases = [c for dtype in dtypes for c in task.golden_cases(spec, levels, dtype, l4_steps)]
    keys = [c.key for c in cases]
    if len(set(keys)) != len(keys):
        raise ValueError(f"golden case keys repeat: {sorted(k for k in keys if keys.count(k) > 1)}")
    _prepare_folder(out)
    stored: Arrays = {}
    outputs: dict[str, Arrays] = {b: {} for b in BACKENDS}
    entries, checks = [], []
    for i, case in enumerate(cases):
        cid = _case_id(i)
        inputs = {k: np.ascontiguousarray(v) for k, v in case.inputs().items()}
        names = {}
        for name, a in inputs.items():
            names[name] = _input_key(a)
            stored[names[name]] = a
        seconds, main, own = {}, {}, {}
        for b in BACKENDS:
            t0 = time.perf_counter()
            main[b] = _run(case, b, RECORD_DEVICE, inputs)
            if _has_envelope(case):
                own[b] = rounding_alone(case, main[b], _run(case, b, RECORD_DEVICE, ulp_inputs(inputs, spec.seed)))
            seconds[b] = round(time.perf_counter() - t0, 3)
            outputs[b].update({f"{cid}/{k}": v for k, v in main[b].items()})
            outputs[b].update({f"{cid}/{ULP}/{g}": v for g, v in own.get(b, {}).items()})
        checks += compare_case(case, main["tf"], main["torch"], own, RECORD_DEVICE, False, "tf vs torch, recorded")
        entries.append(
            {
                "id": cid,
                "key": case.key,
                "level": case.level,
                "name": case.name,
                "dtype": case.dtype,
                "envelope": _has_envelope(case),
                "compare": {g: vars(c) for g, c in case.compare.items()},
                "inputs": names,
                "outputs": sorted(main["torch"]),
                "envelope_groups": sorted(own.get("torch", {})),
                "seconds": seconds,
            }
        )
    checkpoint.save(out / INPUTS_FILE, stored, {"kind": "golden-inputs", "preset": preset})
    envs = {b: environment(b) for b in BACKENDS}
    for b in BACKENDS:
        checkpoint.save(out / outputs_file(b), outputs[b], {"kind": "golden-outputs", "backend": b, **envs[b]})
    write_json(
        out / MANIFEST,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "preset": preset,
            "task": task.name,
            "spec": to_dict(spec),
            "seed": spec.seed,
            "levels": list(levels),
            "dtypes": list(dtypes),
            "l4_steps": l4_steps,
            "recorded_on": RECORD_DEVICE,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dualkit": _dualkit_version(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "environment": envs,
            "bounds": {"cpu": BOUNDS, "gpu_factor": GPU_FACTOR, "envelope_factor": ENVELOPE_FACTOR},
            "files": {"inputs": INPUTS_FILE, **{b: outputs_file(b) for b in BACKENDS}},
            "cases": entries,
        },
    )
    nbytes = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return Recording(out, len(cases), nbytes, checks, time.perf_counter() - t_start)


def _has_envelope(case: GoldenCase) -> bool:
    return case.envelope and case.dtype == "float32"


def _run(case: GoldenCase, backend: str, device: str, inputs: Arrays) -> Arrays:
    out = {k: np.asarray(v) for k, v in case.run(backend, device, inputs).items()}
    stray = [k for k in out if group_of(k) not in case.compare]
    if stray:
        raise ValueError(f"golden case {case.key!r} returned outputs outside its compared groups: {stray}")
    return out


# -- loading ------------------------------------------------------------------------------------------------
@dataclass
class Golden:
    """A loaded recording."""

    path: Path
    manifest: dict[str, Any]
    inputs: Arrays
    outputs: dict[str, Arrays]  # backend -> every case's outputs, "<case id>/<output>"

    @property
    def preset(self) -> str:
        return self.manifest["preset"]

    @property
    def levels(self) -> list[str]:
        return self.manifest["levels"]

    @property
    def dtypes(self) -> list[str]:
        return self.manifest["dtypes"]

    def case_inputs(self, entry: dict[str, Any]) -> Arrays:
        return {name: self.inputs[key] for name, key in entry["inputs"].items()}

    def case_outputs(self, entry: dict[str, Any], backend: str) -> Arrays:
        return {name: self.outputs[backend][f"{entry['id']}/{name}"] for name in entry["outputs"]}

    def case_envelope(self, entry: dict[str, Any], backend: str) -> Arrays:
        """The gap that rounding alone made in ``backend`` per output group (float32 cases with an envelope)."""
        return {g: self.outputs[backend][f"{entry['id']}/{ULP}/{g}"] for g in entry.get("envelope_groups", [])}


def load(path: Path) -> Golden:
    """Read a recording; a folder that is not one, or a damaged one, is refused in one line."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        why = "does not exist" if not path.exists() else f"holds no {MANIFEST}"
        raise DualkitError(
            f"{path} {why}: it is not a golden-file recording; record one on CPU with "
            f"`dualkit parity PRESET --record {path}`"
        )
    try:
        manifest = read_json(path / MANIFEST)
    except ValueError as exc:
        raise DualkitError(f"{path / MANIFEST} is not valid JSON ({exc}); record the golden files again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DualkitError(f"{path / MANIFEST} is not a dualkit golden-file manifest; record the golden files again")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DualkitError(
            f"{path / MANIFEST} has format version {manifest['format_version']}, newer than this dualkit reads "
            f"({FORMAT_VERSION}); upgrade dualkit or record the golden files again"
        )
    inputs, _ = checkpoint.load(path / INPUTS_FILE)
    outputs = {b: checkpoint.load(path / outputs_file(b))[0] for b in BACKENDS}
    for entry in manifest["cases"]:
        missing = [k for k in entry["inputs"].values() if k not in inputs]
        names = entry["outputs"] + [f"{ULP}/{g}" for g in entry.get("envelope_groups", [])]
        missing += [
            f"{b}: {entry['id']}/{n}" for b in BACKENDS for n in names if f"{entry['id']}/{n}" not in outputs[b]
        ]
        if missing:
            raise CheckpointError(
                f"{path}: case {entry['key']!r} lacks a recorded tensor ({missing[0]}); record the golden files again"
            )
    return Golden(path, manifest, inputs, outputs)


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
            if d:
                return d
        return None
    return None if a == b else f"{where}: recorded {a!r}, here {b!r}"


def check_spec(golden: Golden, task: Any, spec: Any) -> None:
    """Refuse a recording of another task or spec than the one asked for, naming the first field that differs."""
    if golden.manifest["task"] != task.name:
        raise SpecError(
            f"{golden.path} holds golden files of a {golden.manifest['task']!r} task ({golden.preset}), not "
            f"{task.name!r}; name its own preset or record this one"
        )
    # the recorded spec read as this dualkit reads it: fields added since take their defaults
    recorded = to_dict(from_dict(golden.manifest["spec"]))
    diff = _first_difference(recorded, to_dict(spec))
    if diff:
        raise SpecError(
            f"{golden.path} was recorded for another spec ({diff}); check with the recording's preset and --set "
            f"values ({golden.preset}) or record again"
        )


# -- checking -------------------------------------------------------------------------------------------------
def check(
    task: Any,
    spec: Any,
    golden: Golden,
    backend: str,
    device: str,
    levels: list[str] | None = None,
    dtypes: list[str] | None = None,
    device_parity: bool | None = None,
) -> list[Check]:
    """Each recorded case of ``levels`` x ``dtypes`` (default: all recorded) computed by ``backend`` on ``device``
    and compared with both recorded backends; with ``device_parity`` (default: on a GPU) also with the same backend
    on this machine's CPU, same inputs (device parity)."""
    check_spec(golden, task, spec)
    levels = levels or golden.levels
    dtypes = dtypes or golden.dtypes
    module = registry.get_backend(backend, device)
    device = registry.resolve_device(module, device)
    here = environment(backend) if device == RECORD_DEVICE else None
    if device_parity is None:
        device_parity = device != RECORD_DEVICE
    cases = {
        c.key: c
        for dtype in golden.dtypes
        for c in task.golden_cases(spec, golden.levels, dtype, golden.manifest.get("l4_steps"))
    }
    out: list[Check] = []
    for entry in golden.manifest["cases"]:
        if entry["level"] not in levels or entry["dtype"] not in dtypes:
            continue
        case = cases.get(entry["key"])
        if case is None:
            raise DualkitError(
                f"{golden.path}: recorded case {entry['key']!r} is not a parity case of this dualkit (the recording "
                f"is older or newer); record it again with `dualkit parity {golden.preset} --record {golden.path}`"
            )
        inputs = golden.case_inputs(entry)
        main = {b: golden.case_outputs(entry, b) for b in BACKENDS}
        own = {b: golden.case_envelope(entry, b) for b in BACKENDS}
        try:
            got = _run(case, backend, device, inputs)
        except Exception as exc:  # one case that cannot run on this device fails alone; the others still report
            out.append(_error_check(case, f"{backend} {device}", exc))
            continue
        for ref in BACKENDS:
            exact = here is not None and ref == backend and here == golden.manifest["environment"][ref]
            label = f"{backend} {device} vs {ref} cpu, recorded"
            out += compare_case(case, got, main[ref], own, device, exact, label)
        if device_parity:
            try:
                local = _run(case, backend, RECORD_DEVICE, inputs)
            except Exception as exc:
                out.append(_error_check(case, f"{backend} cpu", exc))
                continue
            out += compare_case(case, got, local, own, device, False, f"{backend} {device} vs {backend} cpu here")
    return out


def _error_check(case: GoldenCase, where: str, exc: Exception) -> Check:
    msg = (str(exc).strip().splitlines() or [""])[0][:300]
    return Check(
        case.level, f"{case.name}: {where}", float("nan"), 0.0, False, f"{type(exc).__name__}: {msg}", case.dtype
    )


# -- comparing ----------------------------------------------------------------------------------------------
def _group(outputs: Arrays, group: str) -> Arrays:
    return {k: v for k, v in outputs.items() if group_of(k) == group}


def _measure(kind: str, a: Arrays, ref: Arrays) -> tuple[float, str]:
    """abs: the largest max |a - ref| over the tensors; rel: the worst tensor's relative difference."""
    if set(a) != set(ref):
        return float("inf"), f"outputs differ: {sorted(set(a) ^ set(ref))}"
    bad = [k for k in ref if np.shape(a[k]) != np.shape(ref[k])]
    if bad:
        return float("inf"), f"{bad[0]}: shape {np.shape(a[bad[0]])}, recorded {np.shape(ref[bad[0]])}"
    if kind == "rel":
        return max_rel_diff(a, ref)
    worst = max(
        (
            (
                float(np.abs(np.asarray(a[k], np.float64) - np.asarray(ref[k], np.float64)).max())
                if a[k].size
                else 0.0,
                k,
            )
            for k in ref
        ),
        default=(0.0, ""),
    )
    return worst


def _argmax_mismatches(q: np.ndarray, ref: np.ndarray, dtype: str, device: str) -> tuple[int, str]:
    """Rows whose greedy action differs, before the first row where either side's two best Q-values are closer than
    the L1 bound at their scale (a near-tie that rounding may order either way)."""
    q, ref = np.asarray(q, np.float64), np.asarray(ref, np.float64)
    scale = np.maximum(1.0, np.maximum(np.abs(q).max(axis=1), np.abs(ref).max(axis=1)))
    tol = bound("L1", dtype, device) * scale
    tie = (q_margin(q) < tol) | (q_margin(ref) < tol)
    first_tie = int(np.argmax(tie)) if tie.any() else len(q)
    differ = np.argmax(q, axis=1) != np.argmax(ref, axis=1)
    first_diff = int(np.argmax(differ)) if differ.any() else None
    where = (
        f"first near-tie at row {first_tie + 1} of {len(q)}" if first_tie < len(q) else f"no near-tie in {len(q)} rows"
    )
    diff = (
        "greedy actions identical throughout"
        if first_diff is None
        else f"first differing action at row {first_diff + 1}"
    )
    return int(differ[:first_tie].sum()), f"{diff}; {where}"


def rounding_alone(case: GoldenCase, main: Arrays, moved: Arrays) -> Arrays:
    """Per output group with an envelope, the gap between a backend's outputs and its own from 1-ulp-moved weights:
    the per-step relative gaps of a series (``steps``), the group's measure otherwise (``abs``/``rel`` with a
    floor)."""
    out = {}
    for group, cmp in case.compare.items():
        if cmp.kind == "steps":
            out[group] = rel_gaps(moved[group], main[group])
        elif cmp.kind in ("abs", "rel") and cmp.floor_level:
            out[group] = np.asarray(_measure(cmp.kind, _group(moved, group), _group(main, group))[0])
    return out


def compare_case(
    case: GoldenCase, got: Arrays, ref: Arrays, own: dict[str, Arrays], device: str, exact: bool, label: str
) -> list[Check]:
    """One Check per output group: ``got`` against ``ref``. ``own``: per backend, the gap that rounding alone made
    in it per group (float32 cases with an envelope, :func:`rounding_alone`). ``exact``: the same backend on the
    recording's kind of CPU: any difference fails."""
    out = []
    for group, cmp in case.compare.items():
        name = f"{case.name}{' ' + group if len(case.compare) > 1 else ''}: {label}"
        envelope = {} if exact else {b: g[group] for b, g in own.items() if group in g}
        a, r = _group(got, group), _group(ref, group)
        out.append(_compare_group(case, group, cmp, a, r, envelope, device, exact, name))
    return out


def _compare_group(
    case: GoldenCase,
    group: str,
    cmp: Compare,
    a: Arrays,
    r: Arrays,
    envelope: Arrays,
    device: str,
    exact: bool,
    name: str,
) -> Check:
    level, dtype = case.level, case.dtype
    fixed = 0.0 if exact else bound(level, dtype, device)
    exact_note = "exact: same backend, versions, threads and processor as the recording" if exact else ""
    if cmp.kind == "steps":
        if set(a) != {group} or set(r) != {group} or len(a[group]) != len(r[group]):
            return Check(level, name, float("inf"), fixed, False, "per-step series differ in length", dtype)
        gaps = rel_gaps(a[group], r[group])
        if envelope:
            return envelope_check(level, name, gaps, envelope, device)
        worst = float(gaps.max()) if len(gaps) else 0.0
        t = int(np.argmax(gaps)) + 1 if len(gaps) else 0
        detail = "; ".join(x for x in (f"{len(gaps)} steps, worst at step {t}", exact_note) if x)
        return Check(level, name, worst, fixed, bool(np.isfinite(worst) and worst <= fixed), detail, dtype)
    if cmp.kind == "argmax":
        count, detail = _argmax_mismatches(a[group], r[group], dtype, device)
        return Check(level, name, float(count), 0.0, count == 0, detail, dtype)
    value, worst = _measure(cmp.kind, a, r)
    detail = f"{'max abs' if cmp.kind == 'abs' else 'relative'}, worst: {worst}"
    b = fixed
    if envelope:
        alone = max(float(v) for v in envelope.values())
        b = max(cmp.floor_factor * bound(cmp.floor_level, "float32", device), ENVELOPE_FACTOR * alone)
        detail += (
            f"; rounding alone (1-ulp weights, same backend): {alone:.2e}, bound max(floor, {ENVELOPE_FACTOR:g} x that)"
        )
    if exact_note:
        detail += f"; {exact_note}"
    return Check(level, name, value, b, bool(np.isfinite(value) and value <= b), detail, dtype)
