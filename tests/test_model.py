import pytest
import torch

from pfpld.models import build_model, build_from_spec
from pfpld.models.spec import ModelSpec


def test_pfpld_width_1_has_reference_parameter_count_and_keys():
    model, spec, _ = build_model("pfpld", width=1.0)
    assert sum(p.numel() for p in model.parameters()) == 1_729_674
    keys = model.state_dict().keys()
    assert len(keys) == 291
    for k in ["conv1.weight", "bn1.running_var", "conv3_1.conv.0.weight", "block3_5.conv.7.bias",
              "conv5_1.conv.6.weight", "conv6_1.conv.4.weight", "conv7.0.weight", "conv7.1.bias", "conv8.bias",
              "bn8.weight", "fc.weight", "fc_aux.weight", "conv4_aux.0.weight", "conv4_aux.1.running_mean",
              "fc1_aux.weight", "fc2_aux.bias"]:
        assert k in keys


def test_reference_style_state_dict_loads_strictly():
    model, _, _ = build_model("pfpld")
    released = {k: v.clone() for k, v in model.state_dict().items()}   # a plain state_dict, as released
    fresh, _, _ = build_model("pfpld")
    fresh.load_state_dict(released, strict=True)


@pytest.mark.parametrize("width,size", [(1.0, 112), (0.25, 112), (1.0, 96), (0.25, 128)])
def test_outputs_have_spec_shapes_for_width_and_input_size(width, size):
    model, spec, contract = build_model("pfpld", width=width, input_size=size)
    model.eval()
    landmarks, pose = model(torch.rand(2, 3, size, size))
    assert spec.output_names == ["landmarks", "pose"]
    assert landmarks.shape == (2, *spec.output("landmarks").shape) == (2, 196)
    assert pose.shape == (2, *spec.output("pose").shape) == (2, 3)
    assert contract.input_size == size


def test_pool_kernels_follow_input_size():
    model, _, _ = build_model("pfpld", input_size=128)
    assert model.avg_pool1.kernel_size == 16 and model.avg_pool2.kernel_size == 8
    assert model.conv8.kernel_size == (8, 8) and model.max_pool1.kernel_size == 4


def test_spec_round_trips_and_rebuilds_the_same_module():
    model, spec, _ = build_model("pfpld", width=0.25)
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec
    rebuilt = build_from_spec(again)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_input_size_not_multiple_of_16_is_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model("pfpld", input_size=100)
