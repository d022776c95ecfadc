"""The model zoo against the paper and torchvision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from resnet_mlops.models import (
    MODELS,
    BasicBlock,
    Bottleneck,
    ResNet,
    ZeroPadShortcut,
    build_model,
    cifar_resnet,
    count_multiply_adds,
    count_parameters,
    input_size,
)

# Deeper twins of nets `pytest -m "not slow"` keeps (resnet18, resnet50; resnet110): CI runs them.
HEAVY = {"resnet1202", "resnet152", "resnet101", "resnet34"}
IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def zoo_params(names: list[str] | None = None) -> list:
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name
        for name in names or MODELS
    ]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# Exact counts with option A (the paper rounds them: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M).
CIFAR_PARAMETERS = {
    20: 269_722,
    32: 464_154,
    44: 658_586,
    56: 853_018,
    110: 1_727_962,
    1202: 19_421_274,
}
TORCHVISION_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# Paper Table 1, "FLOPs" (multiply-adds) at 224x224.
TABLE1_MULTIPLY_ADDS = {
    "resnet18": 1.8e9,
    "resnet34": 3.6e9,
    "resnet50": 3.8e9,
    "resnet101": 7.6e9,
    "resnet152": 11.3e9,
}


@pytest.mark.parametrize(
    "depth",
    [
        pytest.param(d, marks=pytest.mark.slow) if f"resnet{d}" in HEAVY else d
        for d in CIFAR_PARAMETERS
    ],
)
def test_cifar_parameter_counts_match_the_paper(depth: int) -> None:
    with torch.device("meta"):
        residual = MODELS[f"resnet{depth}"]()
        plain = MODELS.get(f"plain{depth}", MODELS[f"resnet{depth}"])()
    assert residual.depth == depth
    assert count_parameters(residual) == CIFAR_PARAMETERS[depth]
    # Option A shortcuts have no parameters, so a plain net has exactly as many.
    assert count_parameters(plain) == CIFAR_PARAMETERS[depth]


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_parameter_counts_match_torchvision(name: str) -> None:
    with torch.device("meta"):
        ours = MODELS[name]()
        theirs = getattr(torchvision.models, name)(weights=None)
    assert count_parameters(ours) == TORCHVISION_PARAMETERS[name] == count_parameters(theirs)
    assert ours.depth == int(name.removeprefix("resnet"))


@pytest.mark.parametrize("name", IMAGENET)
def test_table1_multiply_adds_within_3_percent(name: str) -> None:
    with torch.device("meta"):
        model = MODELS[name]()
    macs = count_multiply_adds(model, 224)
    assert macs == pytest.approx(TABLE1_MULTIPLY_ADDS[name], rel=0.03)


def test_torchvision_v15_stride_placement_costs_more_than_table1() -> None:
    with torch.device("meta"):
        paper = MODELS["resnet50"]()
        v15 = MODELS["resnet50"](stride_in_1x1=False)
    assert count_multiply_adds(v15, 224) > 1.05 * count_multiply_adds(paper, 224)


@pytest.mark.parametrize("name", zoo_params())
def test_forward_shapes_at_native_size(name: str) -> None:
    # Train-mode BN: with untrained running statistics, eval mode lets the activations of
    # ResNet-1202's 600 un-normalised residual sums overflow.
    model = MODELS[name]()
    size = input_size(model)
    classes = 10 if model.stem == "cifar" else 1000
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    final = size // 4 if model.stem == "cifar" else size // 32
    assert features.shape == (2, model.num_features, final, final)
    assert logits.shape == (2, classes)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(features), logits)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)


@pytest.mark.parametrize("name", zoo_params())
def test_backward_reaches_every_parameter(name: str) -> None:
    model = MODELS[name]()
    # The nets are fully convolutional up to the pooling, so a small input exercises every
    # weight at a fraction of the cost of 224x224.
    size = 32 if model.stem == "cifar" else 64
    x = torch.randn(2, 3, size, size)
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reached {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient in {pname}"


@pytest.mark.parametrize("name", zoo_params(IMAGENET))
def test_torchvision_state_dict_loads_and_outputs_agree(name: str) -> None:
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    kwargs = {} if name in ("resnet18", "resnet34") else {"stride_in_1x1": False}
    ours = MODELS[name](**kwargs).eval()
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    theirs_shapes = {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours_shapes == theirs_shapes
    # Random running statistics, so that BN is not the identity and the check is sharp.
    for module in theirs.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_paper_stride_placement_loads_torchvision_weights_but_computes_differently() -> None:
    theirs = torchvision.models.resnet50(weights=None).eval()
    ours = MODELS["resnet50"]().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(ours(x), theirs(x))


@pytest.mark.parametrize(("stride", "in_planes", "planes"), [(1, 16, 16), (2, 16, 32)])
def test_option_a_block_with_zeroed_branch_passes_input_through_padded(
    stride: int, in_planes: int, planes: int
) -> None:
    block = BasicBlock(in_planes, planes, stride, shortcut="A").eval()
    torch.nn.init.zeros_(block.bn2.weight)
    torch.nn.init.zeros_(block.bn2.bias)
    x = torch.rand(2, in_planes, 8, 8)  # non-negative, as after a ReLU
    with torch.no_grad():
        out = block(x)
    assert out.shape == (2, planes, 8 // stride, 8 // stride)
    torch.testing.assert_close(out[:, :in_planes], x[:, :, ::stride, ::stride])
    assert (out[:, in_planes:] == 0).all()


def test_option_a_shortcut_has_no_parameters() -> None:
    assert count_parameters(ZeroPadShortcut(16, 32, 2)) == 0
    with pytest.raises(ValueError, match="cannot shrink"):
        ZeroPadShortcut(32, 16, 2)


def test_plain_block_has_no_shortcut() -> None:
    block = BasicBlock(16, 16, shortcut=None).eval()
    torch.nn.init.zeros_(block.bn2.weight)
    torch.nn.init.zeros_(block.bn2.bias)
    with torch.no_grad():
        assert (block(torch.rand(1, 16, 8, 8)) == 0).all()


def _projections(model: ResNet) -> int:
    return sum(
        isinstance(m, BasicBlock | Bottleneck) and isinstance(m.downsample, torch.nn.Sequential)
        for m in model.modules()
    )


def test_shortcut_options_b_and_c_place_projections() -> None:
    a, b, c = (cifar_resnet(20, shortcut=option) for option in ("A", "B", "C"))
    assert _projections(a) == 0
    assert _projections(b) == 2  # first block of stages 2 and 3, where the shape changes
    assert _projections(c) == 9  # every block
    # B adds a 1x1 conv + BN at 16->32 and 32->64: (16*32 + 2*32) + (32*64 + 2*64).
    assert count_parameters(b) - count_parameters(a) == 2_752
    assert _projections(MODELS["resnet50"](shortcut="C")) == 16
    assert _projections(MODELS["resnet50"]()) == 4  # option B: the first block of each stage


def test_zero_init_residual_starts_every_block_as_identity() -> None:
    model = MODELS["resnet20"](zero_init_residual=True).eval()
    block = model.layer1[1]
    assert (block.bn2.weight == 0).all()
    x = torch.rand(2, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)
    bottleneck_net = MODELS["resnet50"](zero_init_residual=True)
    assert all(
        (m.bn3.weight == 0).all() for m in bottleneck_net.modules() if isinstance(m, Bottleneck)
    )


def test_channels_last_gives_the_same_outputs() -> None:
    model = MODELS["resnet20"]().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_gives_the_same_outputs() -> None:
    model = MODELS["resnet20"]().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        out = torch.compile(model)(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_bad_arguments_fail_with_clear_messages() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)
    with pytest.raises(ValueError, match="unknown shortcut option 'D'"):
        cifar_resnet(20, shortcut="D")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="unknown model 'resnet21'"):
        build_model("resnet21")


def test_multiply_adds_count_leaves_batchnorm_statistics_alone() -> None:
    model = MODELS["resnet20"]()
    count_multiply_adds(model, 32)
    assert model.training
    assert (model.bn1.running_mean == 0).all()
