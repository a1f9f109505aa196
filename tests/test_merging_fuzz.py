"""Fuzzing every merge method over state-dict shapes, dtypes and mismatches: a merged state dict with θ_0's
keys, shapes and dtypes, or an InputError; never an exception from deep inside torch."""

import math

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mergeflow.io import InputError
from mergeflow.merging import METHODS, merge_state_dicts

# Names as open_clip's image encoder has them, so the key-based rules (CART matrices, 2-D tensors) engage.
KEYS = (
    "conv1.weight",
    "class_embedding",
    "positional_embedding",
    "transformer.resblocks.0.attn.in_proj_weight",
    "transformer.resblocks.0.attn.out_proj.bias",
    "transformer.resblocks.0.mlp.c_fc.weight",
    "transformer.resblocks.1.mlp.c_proj.weight",
    "ln_post.weight",
    "proj",
    "num_batches_tracked",
)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64)
DIMS = st.integers(min_value=0, max_value=5)


@st.composite
def models(draw):
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=5, unique=True))
    pretrained = {}
    for key in keys:
        shape = tuple(draw(st.lists(DIMS, min_size=0, max_size=4)))
        dtype = draw(st.sampled_from(DTYPES))
        seed = draw(st.integers(0, 2**16))
        generator = torch.Generator().manual_seed(seed)
        values = torch.randn(shape, generator=generator, dtype=torch.float64)
        pretrained[key] = (values * 10).round().to(dtype) if dtype == torch.int64 else values.to(dtype)
    finetuned = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        model = {
            key: tensor + (0.01 * torch.randn(tensor.shape, dtype=torch.float64)).to(tensor.dtype)
            if tensor.is_floating_point()
            else tensor.clone()
            for key, tensor in pretrained.items()
        }
        # Most models are sound; some carry one defect a bad checkpoint could have.
        defect = draw(st.sampled_from((None, None, None, None, "shape", "dtype", "drop", "nan", "extra")))
        key = draw(st.sampled_from(sorted(model)))
        tensor = model[key]
        if defect == "shape":
            model[key] = torch.zeros((*tensor.shape, 2), dtype=tensor.dtype)
        elif defect == "dtype":
            model[key] = tensor.to(torch.float32 if tensor.dtype != torch.float32 else torch.float16)
        elif defect == "drop":
            del model[key]
        elif defect == "nan" and tensor.is_floating_point() and tensor.numel():
            model[key] = tensor.clone().view(-1).index_fill(0, torch.tensor([0]), math.nan).view(tensor.shape)
        elif defect == "extra":
            model["extra.weight"] = torch.zeros(2)
        finetuned.append(model)
    return pretrained, finetuned


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(models(), st.sampled_from(sorted(METHODS)))
def test_every_method_merges_or_refuses_cleanly(case, method: str) -> None:
    pretrained, finetuned = case
    try:
        merged = merge_state_dicts(method, pretrained, finetuned, {})
    except InputError as err:
        assert str(err)
        event("refused")
        return
    event("merged")
    assert list(merged) == list(pretrained)
    for key, tensor in pretrained.items():
        assert merged[key].shape == tensor.shape and merged[key].dtype == tensor.dtype, key
        if tensor.is_floating_point():
            assert torch.isfinite(merged[key]).all(), key
