"""PyTorch CPU tensors in, tensors out, without copies where the API promises none."""

import numpy as np
import pytest

import pruneplug as pp

torch = pytest.importorskip("torch", reason="torch is not installed (pip install pruneplug[torch])")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_prune_tensor_matches_numpy_reference(dtype):
    tensor = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)).to(getattr(torch, dtype))
    expected = pp.prune(pp.arrays.to_numpy(tensor).copy(), 0.5, backend="numpy")
    result = pp.prune(tensor, 0.5)
    assert isinstance(result, torch.Tensor) and result.dtype == tensor.dtype and result.shape == tensor.shape
    np.testing.assert_array_equal(pp.arrays.to_numpy(result).view(np.uint8), expected.view(np.uint8))
    assert not torch.equal(result, tensor), "prune without inplace must not modify the input"


def test_inplace_prune_writes_into_the_tensor_storage():
    tensor = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    pointer = tensor.data_ptr()
    result = pp.prune(tensor, pattern="2:4", inplace=True)
    assert result is tensor and tensor.data_ptr() == pointer
    assert (tensor != 0).reshape(8, 2, 4).sum(-1).eq(2).all()


def test_inplace_prune_of_bfloat16_tensor():
    tensor = torch.randn(4, 8, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    expected = pp.prune(tensor.clone(), 0.5)
    pp.prune(tensor, 0.5, inplace=True)
    assert torch.equal(tensor, expected)


def test_scores_and_masks_are_tensors():
    tensor = torch.randn(4, 8, generator=torch.Generator().manual_seed(3)).to(torch.float16)
    scores = pp.importance(tensor, "l1")
    assert isinstance(scores.values, torch.Tensor) and scores.values.dtype == torch.float32
    mask = pp.generate_nm_mask(scores, 2, 4)
    assert isinstance(mask.data, torch.Tensor) and mask.data.dtype == torch.bool
    assert mask.nnz == 16 and mask.to_float("float32").dtype == torch.float32
    assert mask.apply(tensor) is tensor


def test_requires_grad_tensor_is_accepted():
    tensor = torch.randn(4, 4, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    result = pp.prune(tensor, 0.5)
    assert int((result == 0).sum()) == 8


def test_matches_torch_nn_utils_prune_l1_unstructured_without_ties():
    """On tie-free data torch's l1_unstructured prunes the same set (its tie order is unspecified).

    The weights are seeded and tie-free by construction (distinct magnitudes k/2048, random signs,
    random positions): a freshly initialised layer has a tie in about one draw of five."""
    import torch.nn.utils.prune as torch_prune

    g = torch.Generator().manual_seed(5)
    layer = torch.nn.Linear(64, 32)
    magnitudes = (torch.randperm(64 * 32, generator=g) + 1).to(torch.float32) / 2048
    signs = torch.where(torch.rand(64 * 32, generator=g) < 0.5, -1.0, 1.0)
    with torch.no_grad():
        layer.weight.copy_((magnitudes * signs).reshape(32, 64))
    weight = layer.weight.detach().clone()
    assert torch.unique(weight.abs()).numel() == weight.numel(), "test data must be tie-free"
    torch_prune.l1_unstructured(layer, "weight", amount=0.3)
    ours = pp.generate_unstructured_mask(pp.importance(weight), 0.3)
    assert torch.equal(ours.data, layer.weight_mask.bool())
