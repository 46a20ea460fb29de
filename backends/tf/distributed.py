"""Data parallelism on tf.distribute: MultiWorkerMirroredStrategy across processes (TF_CONFIG), MirroredStrategy
across the devices of one process (several GPUs, or logical CPU devices in tests).

One training step on several replicas (:func:`train_step`) runs the model's loss in ``strategy.run`` (a custom
loop: Keras 3's ``fit`` is broken under MultiWorkerMirroredStrategy, keras-team/keras#20585): each replica
computes its shard's loss and gradients, then ONE batched all-reduce (MEAN) carries every gradient, the
per-replica BatchNorm running statistics, the shard's loss and the worker's stop request; the optimizer then
applies the averaged gradients once (``merge_call``). So the update is the global batch's (equal shards), the
running statistics are the mean of the replicas' own updates (as backends/torch/distributed.py makes them), the
logged loss is the global batch's mean, and all workers agree, at the same step, to stop.

The model's variables are plain (not created under ``strategy.scope()``): each worker process holds its own
copy, updated identically from the all-reduced values; inside one process the replicas share them, and the
update is applied once.

Synchronised BatchNorm (cnn.py, ``model.bn_sync``) all-reduces its per-channel sums in the forward pass (and,
through tf.distribute's gradient of an all-reduce, their gradients in the backward pass): :func:`sync_moments`.

Mirrors backends/torch/distributed.py name for name (tests/backends/test_mirror.py).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import tensorflow as tf

from dualkit.core.distributed import SINGLE, World, timeout_s
from dualkit.core.errors import BackendError


class _Engine:
    """The process's distributed state (one process, one world)."""

    world: World = SINGLE
    strategy: tf.distribute.Strategy | None = None
    stop_out: bool = False
    stop_in: bool = False


_engine = _Engine()
# BatchNorm running statistics a replica computed while its step is traced: averaged with the gradients, then
# assigned (thread-local: MirroredStrategy traces each replica in a thread of its own)
_collect = threading.local()
_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its compiled distributed step
_made: dict[World, tf.distribute.Strategy] = {}  # the strategy of each world started in this process


def start(world: World, device: str) -> None:
    """Start the strategy for ``world``: MultiWorkerMirroredStrategy from TF_CONFIG across processes (call it
    before any other TensorFlow op: collectives are configured at start-up), MirroredStrategy over
    ``world.local_replicas`` devices of this process (GPUs, else logical CPU devices). A single replica starts
    nothing."""
    gpu = device == "gpu" or (device == "auto" and bool(tf.config.list_physical_devices("GPU")))
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=timeout_s(),
        implementation=tf.distribute.experimental.CommunicationImplementation.NCCL
        if gpu
        else tf.distribute.experimental.CommunicationImplementation.RING,
    )
    strategy: tf.distribute.Strategy | None = _made.get(world)
    if strategy is not None:
        pass  # a strategy's collectives keep their keys: a second one in the process would reuse (and clash with) them
    elif world.size > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    elif world.local_replicas > 1:
        if gpu:
            gpus = tf.config.list_logical_devices("GPU")
            if len(gpus) < world.local_replicas:
                raise BackendError(f"{world.local_replicas} replicas asked for, but TensorFlow sees {len(gpus)} GPU(s)")
            names = [d.name for d in gpus[: world.local_replicas]]
        else:
            cpu = tf.config.list_physical_devices("CPU")[0]
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * world.local_replicas
                )
            except RuntimeError:  # the runtime is up already: its logical devices stay as they are
                pass
            names = [d.name for d in tf.config.list_logical_devices("CPU")[: world.local_replicas]]
            if len(names) < world.local_replicas:
                raise BackendError(
                    f"{world.local_replicas} CPU replicas need as many logical CPU devices, set before TensorFlow "
                    "starts; start the process anew"
                )
        strategy = tf.distribute.MirroredStrategy(names)
    if strategy is not None:
        _made[world] = strategy
    if strategy is not None and strategy.num_replicas_in_sync != world.replicas:
        raise BackendError(
            f"TensorFlow's strategy has {strategy.num_replicas_in_sync} replicas, the run {world.replicas}: give each "
            "worker process one device (CUDA_VISIBLE_DEVICES), or set DUALKIT_LOCAL_REPLICAS to the devices it has"
        )
    _engine.world, _engine.strategy = world, strategy
    _engine.stop_out = _engine.stop_in = False


def stop() -> None:
    """Put the strategy away (after the run; a no-op where none was started): single-replica steps from here on;
    starting the same world again takes it back."""
    _engine.world, _engine.strategy = SINGLE, None
    _steps.clear()


def replicas() -> int:
    """Replicas training together (1: no distributed engine running)."""
    return _engine.strategy.num_replicas_in_sync if _engine.strategy is not None else 1


def in_step() -> bool:
    """Whether a distributed training step is running (being traced) now: BatchNorm synchronises only then."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return False
    ctx = tf.distribute.get_replica_context()
    return ctx is not None and ctx.num_replicas_in_sync > 1


def barrier() -> None:
    """Wait until every worker got here (a no-op on one)."""
    if _engine.world.size > 1:
        _barrier_fn()


@tf.function
def _barrier_fn() -> tf.Tensor:
    strategy = _engine.strategy
    one = strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", tf.ones(())))
    return strategy.experimental_local_results(one)[0]


def request_stop(flag: bool) -> None:
    """Ask (``flag``) to stop after the next step; the request travels with that step's all-reduce."""
    _engine.stop_out = bool(flag)


def stop_requested() -> bool:
    """Whether any worker asked to stop, as of the last step (so all stop after the same step)."""
    return _engine.stop_in


def sync_moments(
    x: tf.Tensor, vis: tf.Tensor | None = None, shift: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-channel mean and biased variance of NHWC ``x`` over every replica's batch (only the positions where
    ``vis``, (N, H, W, 1) of 0/1, is 1), and the count; one all-reduce of the sums of ``x - shift`` and of its
    squares (``shift``, e.g. the running mean, keeps the one-pass variance accurate). Differentiable."""
    ctx = tf.distribute.get_replica_context()
    channels = x.shape[-1]
    c = tf.zeros((channels,), x.dtype) if shift is None else tf.stop_gradient(tf.convert_to_tensor(shift))
    xc = x - c
    if vis is not None:
        xc = xc * vis
        n = tf.reshape(tf.reduce_sum(vis), (1,))
    else:
        n = tf.cast(tf.reshape(tf.reduce_prod(tf.shape(x)[:-1]), (1,)), x.dtype)
    local = tf.concat([tf.reduce_sum(xc, axis=[0, 1, 2]), tf.reduce_sum(xc * xc, axis=[0, 1, 2]), n], axis=0)
    total = ctx.all_reduce("sum", local)
    count = total[-1]
    m = total[:channels] / count
    return c + m, total[channels : 2 * channels] / count - m * m, count


def assign_running(variable: Any, value: tf.Tensor) -> None:
    """Set a running statistic (BatchNorm's) to ``value``: at once on one replica; inside a distributed step,
    after the step's all-reduce, to the mean of the replicas' values."""
    pending = getattr(_collect, "pending", None)
    if pending is not None and in_step():
        pending.append((variable, value))
    else:
        variable.assign(value)


def train_step(model: Any, arrays: tuple[np.ndarray, ...], lr: float) -> float:
    """One data-parallel optimizer update of a ModelState ``model`` (backends/tf/model.py) on this process's part
    ``arrays`` of the global batch (each of its local replicas takes an equal contiguous shard); returns the loss
    of the global batch (the mean of the shards' losses) before the update."""
    tensors = model._tensors(*arrays)
    fn = _steps.get(model)
    if fn is None:
        fn = _steps[model] = _compile(model, tensors)
    flag = tf.constant(1.0 if _engine.stop_out else 0.0, model.dtype)
    loss, stop = fn(*tensors, tf.constant(lr, tf.float64), flag)
    _engine.stop_in = bool(stop.numpy() > 0)
    return float(loss.numpy())


def _compile(model: Any, tensors: list[tf.Tensor]) -> Any:
    strategy, local = _engine.strategy, _engine.world.local_replicas
    trainable = list(model.params.values())

    def replica(*args: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        *parts, lr, flag = args
        ctx = tf.distribute.get_replica_context()
        i = ctx.replica_id_in_sync_group % local
        shards = []
        for t in parts:
            per = tf.shape(t)[0] // local
            shards.append(t[i * per : (i + 1) * per])
        _collect.pending = pending = []
        try:
            with tf.GradientTape() as tape:
                loss = model._loss(*shards)
        finally:
            _collect.pending = None
        grads = tape.gradient(loss, trainable)
        # dense: an embedding lookup's gradient is IndexedSlices, which the all-reduce and the optimizer take as such
        grads = [tf.convert_to_tensor(g) if g is not None else tf.zeros_like(v) for g, v in zip(grads, trainable)]
        flag = tf.identity(flag)  # made on the replica's device (an input as such has none to reduce to)
        reduced = ctx.all_reduce("mean", [loss, flag, *grads, *(value for _, value in pending)])
        loss, flag, grads, stats = reduced[0], reduced[1], reduced[2 : 2 + len(grads)], reduced[2 + len(grads) :]
        for (variable, _), value in zip(pending, stats):
            variable.assign(value)  # the same value on every replica

        def apply(strategy: tf.distribute.Strategy, *grads: Any) -> None:
            model.optimizer.apply([strategy.experimental_local_results(g)[0] for g in grads], lr)

        ctx.merge_call(apply, args=tuple(grads))
        return loss, flag

    def step(*args: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        loss, flag = strategy.run(replica, args=args)
        return strategy.experimental_local_results(loss)[0], strategy.experimental_local_results(flag)[0]

    signature = [tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in tensors]
    signature += [tf.TensorSpec((), tf.float64), tf.TensorSpec((), model.dtype)]
    return tf.function(step, input_signature=signature)
