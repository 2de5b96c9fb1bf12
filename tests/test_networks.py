"""wgan_ext.networks: the paper's MLPs, the DCGAN critic, bias removal, the Trainer network dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wgan_ext.networks import PAPER_DEFAULTS, MLPCritic, MLPGenerator, remove_bias_, wgan_network


def test_paper_defaults():
    assert PAPER_DEFAULTS == {"lr": 5e-5, "c": 0.01, "batch_size": 64, "n_critic": 5}


def test_mlp_critic_is_the_papers():
    critic = MLPCritic((1, 28, 28))
    linears = [m for m in critic.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 512), (512, 512), (512, 512), (512, 1)]
    assert sum(isinstance(m, nn.ReLU) for m in critic.modules()) == 3
    assert not any(isinstance(m, (nn.Sigmoid, nn.Tanh)) for m in critic.modules())
    with torch.no_grad():
        for m in linears:
            m.weight.fill_(0.1)
            m.bias.fill_(0.0)
        x = torch.ones(2, 1, 28, 28)
        out = critic(x)
    # Linear maps of positive inputs with positive weights: an unbounded score, no sigmoid.
    assert out.shape == (2,) and out[0].item() == pytest.approx(784 * 0.1 * (512 * 0.1) ** 2 * 512 * 0.1, rel=1e-4)
    assert critic(-x).shape == (2,)


def test_mlp_generator_shape_and_tanh():
    gen = MLPGenerator(encoding_dims=5, out_shape=(1, 4, 4), hidden=16, tanh=True)
    out = gen(torch.randn(3, 5) * 100)
    assert out.shape == (3, 1, 4, 4) and out.abs().max() <= 1
    assert gen.encoding_dims == 5 and gen.label_type == "none"
    assert MLPGenerator(5, out_shape=2, hidden=4)(torch.randn(3, 5)).shape == (3, 2)


@pytest.mark.parametrize("kwargs, match", [({"hidden": 0}, "hidden"), ({"in_shape": (1, -2)}, "in_shape"),
                                           ({"label_type": "required"}, "label_type")])
def test_mlp_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLPCritic(**kwargs)


def test_remove_bias():
    net = nn.Sequential(nn.Linear(2, 3), nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 1, 3), nn.BatchNorm2d(1))
    remove_bias_(net)
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.weight", "1.weight", "2.weight", "3.weight", "3.bias"]  # batch-norm shift kept
    assert net[0](torch.zeros(1, 2)).abs().max() == 0  # no bias left in the Linear


def test_network_dict_mlp():
    net = wgan_network("mlp", sample_shape=(2,), encoding_dims=3, hidden=8, bias=False)
    assert set(net) == {"generator", "discriminator"}
    for key in net:
        assert net[key]["optimizer"] == {"name": torch.optim.RMSprop, "args": {"lr": 5e-5}}
    gen = net["generator"]["name"](**net["generator"]["args"])
    critic = net["discriminator"]["name"](**net["discriminator"]["args"])
    assert gen(torch.randn(4, 3)).shape == (4, 2) and critic(torch.randn(4, 2)).shape == (4,)
    assert not any(n.endswith("bias") for n, _ in list(gen.named_parameters()) + list(critic.named_parameters()))


def test_network_dict_dcgan_builds_torchgan_models():
    pytest.importorskip("torchgan", reason="the torchgan extra is not installed")
    from torchgan.models import DCGANDiscriminator, DCGANGenerator

    net = wgan_network("dcgan", image_size=16, channels=1, encoding_dims=4, step_channels=2, bias=False, lr=1e-4)
    gen = net["generator"]["name"](**net["generator"]["args"])
    critic = net["discriminator"]["name"](**net["discriminator"]["args"])
    assert isinstance(gen, DCGANGenerator) and isinstance(critic, DCGANDiscriminator)
    assert net["discriminator"]["optimizer"]["args"] == {"lr": 1e-4}
    convs = [m for m in list(gen.modules()) + list(critic.modules()) if isinstance(m, nn.modules.conv._ConvNd)]
    assert convs and all(m.bias is None for m in convs)
    # The critic has no output nonlinearity (torchgan's default is LeakyReLU(0.2)).
    assert isinstance(critic.disc[-1], nn.Identity)
    with torch.no_grad():
        out = critic(gen(torch.randn(2, 4)))
    assert out.shape == (2,)


def test_network_dict_errors():
    with pytest.raises(ValueError, match="kind must be 'dcgan' or 'mlp'"):
        wgan_network("resnet")
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        wgan_network("mlp", lr=0)


def test_mlp_generator_batchnorm_normalises_each_hidden_layer():
    torch.manual_seed(0)
    gen = MLPGenerator(encoding_dims=5, out_shape=(1, 4, 4), hidden=16, n_hidden=3, batchnorm=True, tanh=True)
    norms = [m for m in gen.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 3 and all(m.num_features == 16 for m in norms)
    # in training mode each hidden layer's pre-activations are standardised over the batch
    h = gen.model[:2](torch.randn(64, 5))
    torch.testing.assert_close(h.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.var(0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in MLPGenerator(5, (2,), hidden=16).modules())
    net = wgan_network("mlp", sample_shape=(2,), encoding_dims=3, hidden=8, batchnorm=True, generator_hidden=12)
    critic = net["discriminator"]["name"](**net["discriminator"]["args"])
    gen = net["generator"]["name"](**net["generator"]["args"])
    assert net["generator"]["args"]["batchnorm"] is True
    assert [m.out_features for m in gen.modules() if isinstance(m, nn.Linear)] == [12, 12, 12, 2]
    assert [m.out_features for m in critic.modules() if isinstance(m, nn.Linear)] == [8, 8, 8, 1]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in critic.modules())  # the critic never has it
