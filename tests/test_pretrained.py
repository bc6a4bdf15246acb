import pytest
import torch

from pointcell import pretrained
from pointcell.errors import PointcellInputError
from pointcell.inference import load_predictor
from pointcell.io.checkpoints import load_checkpoint
from pointcell.model import ModelConfig
from pointcell.pretrained import export_model, model_config_of, pretrained_path
from pointcell.train import TrainConfig, Trainer, initial_state


def test_export_halves_the_weights_and_stays_loadable(small_checkpoint, tmp_path):
    out = export_model(small_checkpoint, tmp_path / "model.pt")
    state = load_checkpoint(out)
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    assert "optimizer" not in state
    assert out.stat().st_size < 0.6 * small_checkpoint.stat().st_size
    predictor = load_predictor(out, device="cpu")
    assert next(predictor.model.parameters()).dtype == torch.float32


def test_fine_tuning_starts_from_the_given_weights(small_checkpoint, tmp_path):
    exported = export_model(small_checkpoint, tmp_path / "model.pt")
    config = TrainConfig(
        images="-",
        points="-",
        model=model_config_of(exported),
        steps=1,
        init_from=str(exported),
        device="cpu",
    )
    initial = initial_state(config)
    trainer = Trainer(config, mean=[0.5] * 3, std=[0.25] * 3, initial_weights=initial["model"])
    expected = initial["model"]["encoder.conv1.weight"].float()
    assert torch.equal(trainer.model.state_dict()["encoder.conv1.weight"], expected)


def test_fine_tuning_checks_the_architecture(small_checkpoint):
    config = TrainConfig(
        images="-",
        points="-",
        model=ModelConfig("resnet34"),
        steps=1,
        init_from=str(small_checkpoint),
    )
    with pytest.raises(
        PointcellInputError, match="is a resnet18 U-Net but the run asks for resnet34"
    ):
        initial_state(config)


def test_shipped_model_names(monkeypatch):
    with pytest.raises(PointcellInputError, match="unknown model 'pointcell-xx'"):
        pretrained_path("pointcell-xx")
    monkeypatch.setitem(pretrained.PRETRAINED, "pointcell-gone", "gone.pt")
    with pytest.raises(PointcellInputError, match="missing from this installation"):
        load_predictor("pointcell-gone")


def test_predict_without_model_uses_the_default_shipped_model():
    """The CLI names the default literally (importing pointcell.pretrained would load torch at
    start-up); it must stay the library's."""
    from pointcell.cli.predict import predict

    option = next(p for p in predict.params if p.name == "model")
    assert option.default == pretrained.DEFAULT_MODEL
    assert pretrained_path(pretrained.DEFAULT_MODEL).is_file()
