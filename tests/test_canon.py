import pytest
import torch

from probex_core.canon import LayerSpec, assemble_layer, find_layers, lora_product, to_matrix


def test_linear_stays_and_conv_flattens_per_output_channel():
    w = torch.randn(8, 5)
    assert torch.equal(to_matrix(w), w)
    k = torch.randn(16, 3, 3, 3)
    m = to_matrix(k)
    assert m.shape == (16, 27)
    assert torch.equal(m[4], k[4].reshape(-1))


def test_vector_becomes_a_column_and_scalar_is_rejected():
    assert to_matrix(torch.arange(4.0)).shape == (4, 1)
    with pytest.raises(ValueError, match="a scalar has no matrix form"):
        to_matrix(torch.tensor(1.0))


def test_lora_product_is_b_at_a_and_checks_rank():
    a, b = torch.randn(4, 12), torch.randn(10, 4)
    torch.testing.assert_close(lora_product(a, b, 2.0), 2.0 * b @ a)
    with pytest.raises(ValueError, match="rank"):
        lora_product(torch.randn(3, 12), b)


def test_find_layers_groups_peft_and_diffusers_pairs():
    shapes = {
        "base_model.model.fc1.lora_A.weight": (4, 768),
        "base_model.model.fc1.lora_B.weight": (128, 4),
        "unet.down.0.attn.to_q.lora.down.weight": (16, 320),
        "unet.down.0.attn.to_q.lora.up.weight": (320, 16),
        "conv.weight": (8, 3, 3, 3),
        "conv.bias": (8,),
        "head.weight": (50, 64),
    }
    layers = find_layers(shapes)
    assert layers["fc1"] == LayerSpec(
        "fc1",
        "lora",
        ("base_model.model.fc1.lora_A.weight", "base_model.model.fc1.lora_B.weight"),
        (128, 768),
    )
    assert layers["unet.down.0.attn.to_q"].shape == (320, 320)
    assert layers["conv"].kind == "conv" and layers["conv"].shape == (8, 27)
    assert layers["head"].kind == "linear"
    assert "conv.bias" not in layers
    assert "conv.bias" in find_layers(shapes, include_vectors=True)


def test_assemble_layer_builds_and_validates():
    shapes = {"m.lora_A.weight": (2, 6), "m.lora_B.weight": (5, 2)}
    spec = find_layers(shapes)["m"]
    a, b = torch.randn(2, 6), torch.randn(5, 2)
    x = assemble_layer(spec, {"m.lora_A.weight": a, "m.lora_B.weight": b})
    torch.testing.assert_close(x, b @ a)
    with pytest.raises(KeyError, match="needs tensors"):
        assemble_layer(spec, {"m.lora_A.weight": a})
    bad = LayerSpec("w", "linear", ("w.weight",), (3, 3))
    with pytest.raises(ValueError, match="shape"):
        assemble_layer(bad, {"w.weight": torch.randn(3, 4)})
