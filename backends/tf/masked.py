"""Masked image pretraining in TensorFlow: the classifier's encoder run on masked images, a light decoder.

The encoder is the classifier's (cnn.build_encoder: same layers, so the same canonical names); the masked
forward walks its layers and, after every conv stage, re-zeroes masked positions, so nothing crosses the mask.
BatchNorm takes its batch statistics (and running statistics) from visible positions only. Unmasked,
eval-mode forward is the classifier's encoder unchanged: that is what probing and fine-tuning use.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dualkit.backends.tf import distributed
from dualkit.backends.tf.cnn import _BatchNorm, _layer_name, build_encoder, canonical_variables
from dualkit.backends.tf.losses import masked_mse
from dualkit.backends.tf.model import ModelState
from dualkit.backends.tf.optim import Optimizer
from dualkit.backends.tf.runtime import (
    DTYPES,
    IDENTITY_LAYOUT,
    framework_device,
    to_numpy,
    to_tensor,
)
from dualkit.core.masking import grid_shape, patch_size_for, visible
from dualkit.core.specs import DecoderSpec, ModelSpec, OptimSpec
from dualkit.core.weights import MASK_TOKEN, decoder_channels, decoder_skips, feature_grid, is_buffer


def masked_batchnorm(bn: _BatchNorm, x: tf.Tensor, vis: tf.Tensor, training: bool) -> tf.Tensor:
    """BatchNorm whose batch and running statistics come from visible positions only (``vis`` is
    (N, H, W, 1), 1 = visible); running variance unbiased over the visible count, as torch's own. A synchronised
    BatchNorm (``model.bn_sync``) takes them from every worker's visible positions inside a distributed step."""
    if not training:
        return bn(x, training=False)
    if bn.sync and distributed.in_step():  # the global batch's visible positions
        mean, var, n = distributed.sync_moments(x, vis, shift=bn.running_mean)
        stats_mean, stats_var = tf.stop_gradient(mean), tf.stop_gradient(var)
    else:
        n = tf.reduce_sum(vis)
        mean = tf.reduce_sum(x * vis, axis=[0, 1, 2]) / n
        var = tf.reduce_sum(tf.square((x - mean) * vis), axis=[0, 1, 2]) / n
        stats_mean, stats_var = mean, var
    m = tf.constant(bn.momentum, x.dtype)
    distributed.assign_running(bn.running_mean, (1 - m) * bn.running_mean + m * stats_mean)
    distributed.assign_running(bn.running_var, (1 - m) * bn.running_var + m * stats_var * n / (n - 1))
    scale = tf.math.rsqrt(var + tf.constant(bn.eps, x.dtype)) * bn.weight
    return (x - mean) * scale + bn.bias


def masked_encode(
    encoder: keras.Model, x: tf.Tensor, vis: tf.Tensor, training: bool
) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """NHWC images with masked pixels already zero -> every block's pooled output and its visibility
    (N, h, w, 1), fine to coarse (the last is the coarsest)."""
    outs = []
    pooled = False  # each block ends with pool, then ReLU (cnn.build_encoder): that ReLU gives the block output
    for layer in encoder.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, _BatchNorm):
            x = masked_batchnorm(layer, x, vis, training)
        elif isinstance(layer, keras.layers.ReLU):
            x = tf.nn.relu(x) * vis  # re-zero: convs spread values into masked positions
            if pooled:
                outs.append((x, vis))
                pooled = False
        elif isinstance(layer, keras.layers.MaxPooling2D):
            # Patches are aligned with every pooling window, so a window is all visible or all masked: the
            # pool never mixes the two, and the ReLU's re-zeroing on the coarser grid clears the masked ones.
            x = layer(x)
            vis = vis[:, ::2, ::2, :]
            pooled = True
        else:
            x = layer(x)
    return outs


def build_decoder(
    model: ModelSpec, decoder: DecoderSpec, image_shape: tuple[int, int, int], dtype: str = "float32"
) -> keras.Model:
    """Stages of 2x nearest upsampling, [+ 1x1-conv projection of the encoder's output at that resolution,]
    3x3 conv, ReLU (one per encoder block), then a 1x1 conv to pixels. Inputs: the coarsest features (the
    mask token is filled in before, by MaskedAutoencoder), then the encoder outputs the skips take, by stage."""
    skips = decoder_skips(model, decoder)
    h, w = feature_grid(model, image_shape)
    feats = keras.Input(shape=(h, w, model.channels[-1]), dtype=dtype)
    skip_inputs = {
        i: keras.Input(shape=(h * 2 ** (i + 1), w * 2 ** (i + 1), model.channels[j]), dtype=dtype)
        for i, j in skips.items()
    }
    x, cin = feats, model.channels[-1]
    for i, cout in enumerate(decoder_channels(model, decoder)):
        x = keras.layers.UpSampling2D(2, interpolation="nearest", dtype=dtype)(x)
        if i in skips:
            x = x + keras.layers.Conv2D(cin, 1, dtype=dtype, name=_layer_name(f"decoder.skip{i}"))(skip_inputs[i])
        x = keras.layers.Conv2D(
            cout, 3, padding="same", activation="relu", dtype=dtype, name=_layer_name(f"decoder.up{i}")
        )(x)
        cin = cout
    out = keras.layers.Conv2D(image_shape[2], 1, dtype=dtype, name=_layer_name("decoder.out"))(x)
    return keras.Model([feats, *skip_inputs.values()], out, name="decoder")


class MaskedAutoencoder(ModelState):
    """The masked autoencoder, its optimizer and steps. Inputs are NHWC numpy batches and (N, h, w) bool
    masks from core (true = masked); outputs are numpy."""

    def __init__(
        self,
        model: ModelSpec,
        decoder: DecoderSpec,
        image_shape: tuple[int, int, int],
        weights: dict[str, np.ndarray],
        optim: OptimSpec,
        norm_pix: bool = True,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        self.device = framework_device(device)
        self.dtype = DTYPES[dtype]
        self.dtype_name = dtype
        self.norm_pix = norm_pix
        self.patch = patch_size_for(model, image_shape)
        gh, gw = grid_shape(image_shape, self.patch)
        with tf.device(self.device):
            self.encoder = build_encoder(model, image_shape, dtype)
            self.decoder = build_decoder(model, decoder, image_shape, dtype)
            self.skips = decoder_skips(model, decoder)
            self.mask_token = None
            self.variables = dict(canonical_variables(self.encoder))
            if decoder.mask_token:
                self.mask_token = tf.Variable(tf.zeros((model.channels[-1],), self.dtype), name="mask_token")
                self.variables[MASK_TOKEN] = (self.mask_token, *IDENTITY_LAYOUT)
            self.variables.update(canonical_variables(self.decoder))
            self.set_weights(weights)
            self.params = {n: v for n, (v, _, _) in self.variables.items() if not is_buffer(n)}
            self.optimizer = Optimizer(optim, self.params, {n: (to, fr) for n, (_, to, fr) in self.variables.items()})
        x_spec = tf.TensorSpec((None, *image_shape), self.dtype)
        vis_spec = tf.TensorSpec((None, *image_shape[:2], 1), self.dtype)
        mask_spec = tf.TensorSpec((None, gh, gw), tf.bool)
        self._train_fn = tf.function(
            self._train, input_signature=[x_spec, vis_spec, mask_spec, tf.TensorSpec((), tf.float64)]
        )
        self._reconstruct_fn = tf.function(lambda x, vis: self._net(x, vis, False), input_signature=[x_spec, vis_spec])
        self._features_fn = tf.function(self._features, input_signature=[x_spec])

    # -- steps ---------------------------------------------------------------------------------
    def _net(self, x: tf.Tensor, vis: tf.Tensor, training: bool) -> tf.Tensor:
        encoded = masked_encode(self.encoder, x * vis, vis, training)
        feats, vis_coarse = encoded[-1]
        if self.mask_token is not None:
            feats = feats * vis_coarse + self.mask_token * (1 - vis_coarse)
        return self.decoder([feats, *(encoded[j][0] for j in self.skips.values())], training=training)

    def _loss(self, x: tf.Tensor, vis: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        return masked_mse(self._net(x, vis, True), x, mask, self.patch, self.norm_pix)

    def _train(self, x: tf.Tensor, vis: tf.Tensor, mask: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        trainable = list(self.params.values())
        with tf.GradientTape() as tape:
            loss = self._loss(x, vis, mask)
        self.optimizer.apply(tape.gradient(loss, trainable), lr)
        return loss

    def _features(self, x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(self.encoder(x, training=False), axis=[1, 2])

    def _tensors(self, x: np.ndarray, mask: np.ndarray) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        vis = visible(mask, self.patch, self.dtype_name)
        return to_tensor(x, self.dtype), to_tensor(vis, self.dtype), to_tensor(np.asarray(mask, bool), tf.bool)

    def forward(self, x: np.ndarray, mask: np.ndarray, training: bool) -> np.ndarray:
        """The reconstruction (N, H, W, C) in train or eval mode, without changing any state."""
        saved = self._buffers()
        with tf.device(self.device):
            xt, vis, _ = self._tensors(x, mask)
            out = to_numpy(self._net(xt, vis, training))
        self.set_weights(saved)
        return out

    def reconstruct(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Eval-mode reconstruction (N, H, W, C); in normalised-patch space when norm_pix is on."""
        with tf.device(self.device):
            xt, vis, _ = self._tensors(x, mask)
            return to_numpy(self._reconstruct_fn(xt, vis))

    def features(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode encoder features of whole images, global-average-pooled: (N, C_last)."""
        with tf.device(self.device):
            return to_numpy(self._features_fn(to_tensor(x, self.dtype)))

    # -- canonical state: ModelState's accessors ------------------------------------------------------
    def rng_models(self) -> list[keras.Model]:
        """The autoencoder has no dropout today (masks come from core): its RNG state is saved all the same."""
        return [self.encoder, self.decoder]
