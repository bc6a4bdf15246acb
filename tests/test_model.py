import pytest
import torch

from pointcell import model as model_module
from pointcell.errors import PointcellInputError
from pointcell.model import (
    PROXIMITY_PRIOR,
    ModelConfig,
    build_model,
    load_encoder_weights,
    split_proximity,
)

SMALL = ModelConfig(encoder="resnet18", decoder_channels=(16, 16, 16, 16, 16))


def test_unet_outputs_two_channels_at_input_size():
    net = build_model(SMALL)
    assert net(torch.zeros(1, 3, 64, 96)).shape == (1, 2, 64, 96)


def test_config_round_trips_through_a_dict():
    assert ModelConfig.from_dict(SMALL.to_dict()) == SMALL


def test_unknown_encoder_names_the_choices():
    with pytest.raises(PointcellInputError, match="unknown encoder 'resnet7'"):
        build_model(ModelConfig(encoder="resnet7"))


def test_local_encoder_weights_are_loaded(tmp_path):
    source = build_model(SMALL)
    with torch.no_grad():
        source.encoder.conv1.weight.fill_(0.125)
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pth")
    net = build_model(SMALL, encoder_weights=str(tmp_path / "encoder.pth"))
    assert torch.equal(net.encoder.conv1.weight, source.encoder.conv1.weight)


def test_classification_network_weights_with_head_are_accepted(tmp_path):
    encoder = build_model(SMALL).encoder.state_dict()
    state = {f"module.{k}": torch.full_like(v, 0.25) for k, v in encoder.items()}
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    torch.save({"state_dict": state}, tmp_path / "resnet18.pth")
    net = build_model(SMALL, encoder_weights=str(tmp_path / "resnet18.pth"))
    loaded = net.encoder.state_dict()
    for name in ("conv1.weight", "layer4.1.bn2.running_var"):  # the "module." prefix is gone
        assert torch.all(loaded[name] == 0.25), name
    assert "fc.weight" not in loaded  # the classification head is dropped


def test_bad_weight_files_give_clear_errors(tmp_path):
    net = build_model(SMALL)
    with pytest.raises(PointcellInputError, match="not found"):
        load_encoder_weights(net, tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PointcellInputError, match="weights file is corrupt or truncated"):
        load_encoder_weights(net, tmp_path / "junk.pth")
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(PointcellInputError, match="do not fit"):
        load_encoder_weights(net, tmp_path / "wrong.pth")


def test_imagenet_offline_explains_the_local_file_option(monkeypatch):
    real_unet = model_module._unet

    def offline(config, *, weights):
        if weights == "imagenet":
            raise OSError("Name or service not known")
        return real_unet(config, weights=weights)

    monkeypatch.setattr(model_module, "_unet", offline)
    with pytest.raises(PointcellInputError, match="--encoder-weights /path/to/weights.pth"):
        build_model(SMALL, encoder_weights="imagenet")


def test_detection_head_adds_a_last_proximity_channel_starting_at_the_prior():
    config = ModelConfig(
        encoder="resnet18",
        decoder_channels=(16, 16, 16, 16, 16),
        classes=("a", "b"),
        detection_head=True,
    )
    torch.manual_seed(0)
    net = build_model(config).eval()
    with torch.no_grad():
        logits = net(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 5, 64, 64)  # background, nucleus, a, b, proximity
    segmentation, proximity = split_proximity(logits, config.detection_head)
    assert segmentation.shape == (1, 4, 64, 64) and proximity.shape == (1, 64, 64)
    assert torch.sigmoid(proximity).mean() == pytest.approx(PROXIMITY_PRIOR, abs=0.01)
    unsplit, none = split_proximity(logits, SMALL.detection_head)  # no head: nothing split
    assert torch.equal(unsplit, logits) and none is None
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict({"encoder": "resnet18", "decoder_channels": [16]}) == (
        ModelConfig(encoder="resnet18", decoder_channels=(16,))  # older checkpoints: no head
    )
