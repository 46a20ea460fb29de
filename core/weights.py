"""Canonical weights: one naming and layout for both backends, and the seeded numpy initialisation.

Layout (PyTorch's): conv kernels (out, in, kh, kw), dense kernels (out, in). Flattening is over
(H, W, C), the order of core's NHWC data, so a flatten head means the same thing in both backends.
Names: ``encoder.block{b}.conv{c}.weight|bias``, ``encoder.block{b}.bn{c}.weight|bias|running_mean|
running_var``, ``head.fc{i}.weight|bias`` and ``head.out.weight|bias``.
"""

from __future__ import annotations

import numpy as np

from dualkit.core.batches import make_rng
from dualkit.core.specs import ModelSpec

BUFFER_SUFFIXES = (".running_mean", ".running_var")


def is_buffer(name: str) -> bool:
    """Tensors that are state but not trained (BatchNorm running statistics)."""
    return name.endswith(BUFFER_SUFFIXES)


def feature_grid(model: ModelSpec, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """Spatial size after the encoder: every block halves H and W (floor, as both max-pools do)."""
    h, w, _ = image_shape
    for _ in model.channels:
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(
            f"image {image_shape[:2]} is too small for {len(model.channels)} pooling blocks; "
            f"use fewer entries in model.channels"
        )
    return h, w


def encoder_shapes(model: ModelSpec, in_channels: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    cin = in_channels
    for b, cout in enumerate(model.channels):
        for c in range(model.convs_per_block):
            prefix = f"encoder.block{b}"
            shapes[f"{prefix}.conv{c}.weight"] = (cout, cin, 3, 3)
            if model.batchnorm:
                for part in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{prefix}.bn{c}.{part}"] = (cout,)
            else:  # a conv bias before BatchNorm is redundant, so it exists only without BN
                shapes[f"{prefix}.conv{c}.bias"] = (cout,)
            cin = cout
    return shapes


def head_shapes(model: ModelSpec, image_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    h, w = feature_grid(model, image_shape)
    fan_in = model.channels[-1] * (h * w if model.head == "flatten" else 1)
    shapes: dict[str, tuple[int, ...]] = {}
    for i, width in enumerate(model.hidden):
        shapes[f"head.fc{i}.weight"] = (width, fan_in)
        shapes[f"head.fc{i}.bias"] = (width,)
        fan_in = width
    shapes["head.out.weight"] = (model.num_classes, fan_in)
    shapes["head.out.bias"] = (model.num_classes,)
    return shapes


def classifier_shapes(model: ModelSpec, image_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of the classifier, in a fixed order, with its shape."""
    return {**encoder_shapes(model, image_shape[2]), **head_shapes(model, image_shape)}


def init_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """He-normal kernels (LeCun-normal for the logits layer), zero biases, identity BatchNorm."""
    if name.endswith((".bias", ".running_mean")):
        return np.zeros(shape)
    if name.endswith(".running_var") or (".bn" in name and name.endswith(".weight")):
        return np.ones(shape)
    fan_in = int(np.prod(shape[1:]))
    gain = 1.0 if name.startswith("head.out.") else 2.0
    return rng.normal(0.0, np.sqrt(gain / fan_in), size=shape)


def init_weights(
    shapes: dict[str, tuple[int, ...]], seed: int, dtype: str = "float32", stream: str = "init"
) -> dict[str, np.ndarray]:
    """Draw every tensor in ``shapes`` order from one seeded stream, so both backends start equal."""
    rng = make_rng(seed, stream)
    return {name: init_tensor(name, shape, rng).astype(dtype) for name, shape in shapes.items()}


def init_classifier(
    model: ModelSpec, image_shape: tuple[int, int, int], seed: int, dtype: str = "float32"
) -> dict[str, np.ndarray]:
    return init_weights(classifier_shapes(model, image_shape), seed, dtype)


# -- DQN Q-network ---------------------------------------------------------------------------------
QNET_PREFIX = "q"  # the online network's canonical names: q.fc{i}.weight|bias, q.out.weight|bias
TARGET_PREFIX = "target"  # the target network: the same names under target.


def qnet_shapes(
    hidden: tuple[int, ...], obs_dim: int, num_actions: int, prefix: str = QNET_PREFIX
) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of the Q-network MLP (dense kernels (out, in)), in a fixed order."""
    shapes: dict[str, tuple[int, ...]] = {}
    fan_in = obs_dim
    for i, width in enumerate(hidden):
        shapes[f"{prefix}.fc{i}.weight"] = (width, fan_in)
        shapes[f"{prefix}.fc{i}.bias"] = (width,)
        fan_in = width
    shapes[f"{prefix}.out.weight"] = (num_actions, fan_in)
    shapes[f"{prefix}.out.bias"] = (num_actions,)
    return shapes


def init_qnet(
    hidden: tuple[int, ...], obs_dim: int, num_actions: int, seed: int, dtype: str = "float32"
) -> dict[str, np.ndarray]:
    """Online Q-network weights: PyTorch nn.Linear's default distribution, U(+-1/sqrt(fan_in)) for
    kernels and biases (what CleanRL's reference DQN starts from), drawn in numpy from one seeded stream."""
    rng = make_rng(seed, "init/qnet")
    out: dict[str, np.ndarray] = {}
    fan_in = obs_dim
    for name, shape in qnet_shapes(hidden, obs_dim, num_actions).items():
        if name.endswith(".weight"):
            fan_in = shape[1]
        bound = 1.0 / np.sqrt(fan_in)
        out[name] = rng.uniform(-bound, bound, size=shape).astype(dtype)
    return out


def target_names(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The online weights renamed as the target network's (a copy: the target is its own tensors)."""
    head = QNET_PREFIX + "."
    return {TARGET_PREFIX + "." + k[len(head) :]: np.array(v) for k, v in weights.items() if k.startswith(head)}


# -- masked image pretraining: the decoder -----------------------------------------------------------
MASK_TOKEN = "decoder.mask_token"


def decoder_channels(model: ModelSpec, decoder) -> tuple[int, ...]:
    """The decoder's stage widths, coarse to fine (``decoder`` is a core.specs.DecoderSpec):
    its own, or the encoder's channels halved and reversed."""
    if decoder.channels:
        return tuple(decoder.channels)
    return tuple(max(c // 2, 1) for c in reversed(model.channels))


def decoder_skips(model: ModelSpec, decoder) -> dict[int, int]:
    """Hierarchical decoding (``decoder.skips``): decoder stage i -> the encoder block whose pooled output has
    the resolution of that stage's upsampled input (block ``blocks - 2 - i``); the finest stage has none."""
    if not decoder.skips:
        return {}
    blocks = len(model.channels)
    return {i: blocks - 2 - i for i in range(blocks - 1)}


def decoder_shapes(model: ModelSpec, decoder, in_channels: int) -> dict[str, tuple[int, ...]]:
    """The decoder's canonical tensors: ``decoder.mask_token`` (C_enc,), one upsampling stage per
    encoder block ``decoder.up{i}.weight|bias`` (3x3 convs), with ``decoder.skips`` a 1x1 conv
    ``decoder.skip{i}.weight|bias`` per stage that takes an encoder output (see decoder_skips), and
    ``decoder.out.weight|bias`` (1x1 conv to the image channels), conv kernels in the canonical
    (out, in, kh, kw) layout."""
    shapes: dict[str, tuple[int, ...]] = {}
    cin = model.channels[-1]
    if decoder.mask_token:
        shapes[MASK_TOKEN] = (cin,)
    skips = decoder_skips(model, decoder)
    for i, cout in enumerate(decoder_channels(model, decoder)):
        if i in skips:
            shapes[f"decoder.skip{i}.weight"] = (cin, model.channels[skips[i]], 1, 1)
            shapes[f"decoder.skip{i}.bias"] = (cin,)
        shapes[f"decoder.up{i}.weight"] = (cout, cin, 3, 3)
        shapes[f"decoder.up{i}.bias"] = (cout,)
        cin = cout
    shapes["decoder.out.weight"] = (in_channels, cin, 1, 1)
    shapes["decoder.out.bias"] = (in_channels,)
    return shapes


def masked_shapes(model: ModelSpec, decoder, in_channels: int) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of the masked autoencoder: the classifier's encoder, then the decoder."""
    return {**encoder_shapes(model, in_channels), **decoder_shapes(model, decoder, in_channels)}


def init_decoder(
    model: ModelSpec, decoder, in_channels: int, seed: int, dtype: str = "float32"
) -> dict[str, np.ndarray]:
    """He-normal convs, zero biases (init_weights), and the mask token drawn N(0, 0.02) as MAE's."""
    shapes = decoder_shapes(model, decoder, in_channels)
    out = init_weights({k: v for k, v in shapes.items() if k != MASK_TOKEN}, seed, dtype, stream="init/decoder")
    if MASK_TOKEN in shapes:
        token = make_rng(seed, "init/mask_token").normal(0.0, 0.02, size=shapes[MASK_TOKEN]).astype(dtype)
        out = {MASK_TOKEN: token, **out}
    return {k: out[k] for k in shapes}


def init_masked(
    model: ModelSpec, decoder, in_channels: int, seed: int, dtype: str = "float32"
) -> dict[str, np.ndarray]:
    """The encoder exactly as ``init_classifier`` draws it for the same seed (so the random-init
    baseline is the pretraining's starting point), then the decoder from its own streams."""
    encoder = init_weights(encoder_shapes(model, in_channels), seed, dtype)
    return {**encoder, **init_decoder(model, decoder, in_channels, seed, dtype)}
