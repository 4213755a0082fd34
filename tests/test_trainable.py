"""The training loop names its model by a protocol (fader_kit.model.trainable), not by importing fader.py:
the model the package builds must keep every member the protocol lists."""
from fader_kit.model.config import FaderConfig, UNetConfig
from fader_kit.model.fader import FaderModel
from fader_kit.model.trainable import TrainableFader
from fader_kit.model.unet import EARUNet


def test_the_fader_model_is_what_the_training_loop_trains():
    unet = EARUNet(UNetConfig(widths=(4, 8)))
    assert isinstance(FaderModel(unet, None, FaderConfig(patch_size=8, hidden=8)), TrainableFader)
    assert not isinstance(unet, TrainableFader)  # a bare reconstructor has no head, config or calibration
