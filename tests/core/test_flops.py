"""Analytic FLOP counts and the encoder's conv list that the overhead benchmark times."""

from __future__ import annotations

from dualkit.core.flops import ConvLayer, classifier_forward_flops, classifier_train_flops, conv_layers
from dualkit.tasks import presets


def test_conv_layers_follow_the_blocks_and_their_pools():
    model = presets.load("cnn-cifar10").model  # channels 32, 64, 128; two convs per block
    assert conv_layers(model, (32, 32, 3)) == [
        ConvLayer("encoder.block0.conv0.weight", 32, 32, 3, 32, 3),
        ConvLayer("encoder.block0.conv1.weight", 32, 32, 32, 32, 3),
        ConvLayer("encoder.block1.conv0.weight", 16, 16, 32, 64, 3),
        ConvLayer("encoder.block1.conv1.weight", 16, 16, 64, 64, 3),
        ConvLayer("encoder.block2.conv0.weight", 8, 8, 64, 128, 3),
        ConvLayer("encoder.block2.conv1.weight", 8, 8, 128, 128, 3),
    ]


def test_forward_flops_count_every_conv_and_the_logits_layer():
    model = presets.load("cnn-cifar10").model
    convs = 2 * 9 * (32 * 32 * (3 * 32 + 32 * 32) + 16 * 16 * (32 * 64 + 64 * 64) + 8 * 8 * (64 * 128 + 128 * 128))
    head = 2 * 128 * 10  # global average pool, then 128 -> 10
    assert classifier_forward_flops(model, (32, 32, 3)) == convs + head == 77_269_504
    assert classifier_train_flops(model, (32, 32, 3)) == 3 * (convs + head)
