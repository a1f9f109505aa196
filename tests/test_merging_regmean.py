"""RegMean and RegMean++ against transcriptions of FusionBench's code, their identities, and the Gram hooks of an
open_clip image encoder against a forward pass written out by hand."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from mergeflow.io import InputError
from mergeflow.merging.context import TensorContext
from mergeflow.merging.methods.regmean import regmean, regmean_matrix
from mergeflow.merging.regmean_plusplus import PRE_BLOCK_PREFIXES, regmean_plusplus_visual
from mergeflow.models.clip import build_clip, tiny_clip_spec
from mergeflow.statistics.grams import (
    GramAccumulator,
    attention_values,
    linear_input_grams,
    merged_weight_keys,
    recording_grams,
)

ARCHITECTURE = {
    "embed_dim": 8,
    "image_size": 16,
    "patch_size": 8,
    "width": 16,
    "layers": 2,
    "heads": 2,
    "text_width": 8,
    "text_heads": 2,
    "text_layers": 1,
    "context_length": 4,
}
SPEC = tiny_clip_spec("tiny-regmean", ARCHITECTURE)
BLOCK_WEIGHTS = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# FusionBench keys its Grams by module name; in_proj stands for transformers' q/k/v_proj modules.
MODULE_NAMES = dict(zip(BLOCK_WEIGHTS, ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")))


# --- FusionBench, transcribed -----------------------------------------------------------------------------------


def fusionbench_reduce_non_diagonal_elements(regmean_weights: torch.Tensor, reduce_non_diagonal_ratio: float):
    """tanganke/fusion_bench @ 54c9e8c, fusion_bench/method/regmean/regmean.py L24-40, verbatim."""
    diag_weights = torch.diag(torch.ones(regmean_weights.shape[0]) - reduce_non_diagonal_ratio).to(
        regmean_weights.device
    )
    non_diag_weights = torch.zeros_like(diag_weights).fill_(reduce_non_diagonal_ratio)
    return regmean_weights * (diag_weights + non_diag_weights)


def fusionbench_merging_with_regmean_weights(
    models_to_merge_param_dict: dict,
    models_to_merge_regmean_weights_list: list,
    reduce_non_diagonal_ratio: float = 1.0,
    weight_transpose: bool = True,
):
    """regmean.py L43-120, verbatim but for the comments."""
    merged_params = {}
    for param_name, param_value_list in models_to_merge_param_dict.items():
        merged_by_regmean = False
        if param_name.endswith(".weight"):
            module_name = param_name[: -len(".weight")]
            if module_name in models_to_merge_regmean_weights_list[0].keys():
                param_multiplied_results, module_regmean_weights_list = [], []
                for model_idx, model_to_merge_regmean_weights in enumerate(models_to_merge_regmean_weights_list):
                    module_regmean_weights = model_to_merge_regmean_weights[module_name]
                    module_regmean_weights = fusionbench_reduce_non_diagonal_elements(
                        regmean_weights=module_regmean_weights,
                        reduce_non_diagonal_ratio=reduce_non_diagonal_ratio,
                    )
                    module_regmean_weights_list.append(module_regmean_weights)
                    model_to_merge_param = param_value_list[model_idx]
                    param_multiplied_results.append(
                        torch.matmul(
                            module_regmean_weights,
                            (model_to_merge_param.transpose(0, 1) if weight_transpose else model_to_merge_param),
                        )
                    )
                sum_module_regmean_weights = sum(module_regmean_weights_list)
                sum_param_multiplied_results = sum(param_multiplied_results)
                inv_sum_module_regmean_weights = torch.inverse(sum_module_regmean_weights)
                merged_param = torch.matmul(inv_sum_module_regmean_weights, sum_param_multiplied_results)
                merged_params[param_name] = merged_param.transpose(0, 1) if weight_transpose else merged_param
                merged_by_regmean = True
        if not merged_by_regmean:
            merged_params[param_name] = torch.stack(param_value_list, dim=0).mean(dim=0)
    return merged_params


class FusionBenchGrams:
    """The hook of clip_regmean.py L72-92 / clip_regmean_plusplus.py L70-90: a running mean over rows, in float32."""

    def __init__(self) -> None:
        self.regmean_weights: dict[str, torch.Tensor] = {}
        self.num_computed_examples: dict[str, int] = {}

    def __call__(self, module_name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        xtx = torch.matmul(x.transpose(0, 1), x)
        if module_name not in self.regmean_weights:
            self.regmean_weights[module_name] = xtx / x.shape[0]
            self.num_computed_examples[module_name] = x.shape[0]
        else:
            self.regmean_weights[module_name] = (
                self.regmean_weights[module_name] * self.num_computed_examples[module_name] + xtx
            ) / (self.num_computed_examples[module_name] + x.shape[0])
            self.num_computed_examples[module_name] += x.shape[0]


# --- a tiny open_clip image encoder and its forward pass by hand ----------------------------------------------


def tiny_visual(weights: dict[str, torch.Tensor] | None = None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    visual = build_clip(SPEC).visual
    if weights is not None:
        visual = visual.to(next(iter(weights.values())).dtype)
        visual.load_state_dict(weights)
    return visual.eval()


def tiny_models(num_tasks: int, seed: int, moved=lambda key: True, scale: float = 0.2):
    """(θ_0, [θ_t]): θ_0 a seeded random init with nonzero biases and LayerNorms; θ_t = θ_0 + noise on `moved` keys."""
    generator = torch.Generator().manual_seed(seed)
    pretrained = {
        key: value + 0.1 * torch.randn(value.shape, generator=generator)
        for key, value in tiny_visual(seed=seed).state_dict().items()
    }
    finetuned = [
        {
            key: value + scale * value.abs().mean() * torch.randn(value.shape, generator=generator)
            if moved(key)
            else value.clone()
            for key, value in pretrained.items()
        }
        for _ in range(num_tasks)
    ]
    return pretrained, finetuned


def image_batches(sizes: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, SPEC.image_size, SPEC.image_size, generator=generator) for size in sizes]


def by_hand_block(block: torch.nn.Module, x: torch.Tensor, record) -> torch.Tensor:
    """One open_clip residual block (batch first), the attention written out; `record(name, input)` per linear."""
    attention = block.attn
    heads = attention.num_heads
    batch, tokens, width = x.shape
    h = block.ln_1(x)
    record("attn.in_proj_weight", h)
    q, k, v = F.linear(h, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (y.reshape(batch, tokens, heads, width // heads).transpose(1, 2) for y in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads), dim=-1)
    values = (weights @ v).transpose(1, 2).reshape(batch, tokens, width)
    record("attn.out_proj.weight", values)
    x = x + F.linear(values, attention.out_proj.weight, attention.out_proj.bias)
    h = block.ln_2(x)
    record("mlp.c_fc.weight", h)
    a = block.mlp.gelu(block.mlp.c_fc(h))
    record("mlp.c_proj.weight", a)
    return x + block.mlp.c_proj(a)


def by_hand_grams(visual: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = defaultdict(int)
    with torch.no_grad():
        for images in batches:
            x = visual._embeds(images)
            for index, block in enumerate(visual.transformer.resblocks):

                def record(name: str, inputs: torch.Tensor, index: int = index) -> None:
                    key = f"transformer.resblocks.{index}.{name}"
                    flat = inputs.reshape(-1, inputs.shape[-1]).double()
                    sums[key] = sums.get(key, 0) + flat.T @ flat
                    rows[key] += flat.shape[0]

                x = by_hand_block(block, x, record)
    return {key: total / rows[key] for key, total in sums.items()}


# --- the closed form ------------------------------------------------------------------------------------------


def random_grams(num_tasks: int, size: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_tasks, 3 * size, size, generator=generator, dtype=dtype)
    return inputs.transpose(1, 2) @ inputs / inputs.shape[1]


@pytest.mark.parametrize("ratio", [0.95, 1.0, 0.6, 0.0])
def test_regmean_matrix_is_fusionbenchs_merge_bit_for_bit(ratio: float) -> None:
    weights = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1))
    grams = random_grams(3, 7, seed=2)
    theirs = fusionbench_merging_with_regmean_weights(
        {"layer.weight": list(weights), "layer.bias": [torch.zeros(5)] * 3},
        [{"layer": gram} for gram in grams],
        reduce_non_diagonal_ratio=ratio,
    )
    assert torch.equal(regmean_matrix(weights, grams, ratio), theirs["layer.weight"])


def context(key: str, pretrained: torch.Tensor, finetuned: list[torch.Tensor], grams, ratio: float = 0.95):
    return TensorContext(
        key=key,
        pretrained=pretrained.clone(),
        finetuned=torch.stack([tensor.clone() for tensor in finetuned]),
        hparams={"reduce_non_diagonal_ratio": ratio},
        task_statistics=grams,
    )


def test_the_rule_equals_fusionbench_on_every_kind_of_key() -> None:
    pretrained = {"w.weight": torch.randn(6, 4), "w.bias": torch.randn(6), "proj": torch.randn(4, 3)}
    generator = torch.Generator().manual_seed(3)
    finetuned = [{k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in pretrained.items()} for _ in "ab"]
    grams = random_grams(2, 4, seed=4)
    theirs = fusionbench_merging_with_regmean_weights(
        {key: [model[key] for model in finetuned] for key in pretrained},
        [{"w": gram} for gram in grams],
        reduce_non_diagonal_ratio=0.95,
    )
    for key in pretrained:
        statistics = grams if key == "w.weight" else None
        direction = regmean(context(key, pretrained[key], [m[key] for m in finetuned], statistics))
        assert direction.delta is None
        torch.testing.assert_close(direction.origin, theirs[key], rtol=1e-5, atol=1e-6)


def test_equal_or_identity_grams_give_the_average_and_one_task_gives_the_expert() -> None:
    weights = [torch.randn(5, 4, generator=torch.Generator().manual_seed(seed)) for seed in (5, 6, 7)]
    pretrained = torch.randn(5, 4)
    average = torch.stack(weights).mean(dim=0)
    same = random_grams(1, 4, seed=8).expand(3, 4, 4).clone()
    for grams in (same, torch.eye(4).expand(3, 4, 4).clone()):
        for ratio in (0.95, 0.3):
            merged = regmean(context("w.weight", pretrained, weights, grams, ratio)).origin
            torch.testing.assert_close(merged, average, rtol=1e-5, atol=1e-5)
    merged = regmean(context("w.weight", pretrained, weights[:1], random_grams(1, 4, seed=9))).origin
    torch.testing.assert_close(merged, weights[0], rtol=1e-5, atol=1e-5)


def test_stacked_in_proj_rows_merge_as_separate_q_k_v() -> None:
    weights, grams = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(10)), random_grams(2, 4, seed=11)
    stacked = regmean_matrix(weights, grams, 0.95)
    separate = torch.cat([regmean_matrix(part, grams, 0.95) for part in weights.chunk(3, dim=1)])
    torch.testing.assert_close(stacked, separate, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InputError, match="reduce_non_diagonal_ratio"):
        regmean_matrix(torch.zeros(1, 2, 2), torch.eye(2).unsqueeze(0), 1.5)
    with pytest.raises(InputError, match="expected \\(2, 3, 3\\)"):
        regmean_matrix(torch.zeros(2, 4, 3), random_grams(2, 4, seed=0), 0.95)
    with pytest.raises(InputError, match="expected a matrix"):
        regmean(context("b", torch.zeros(3), [torch.zeros(3)], torch.eye(3).unsqueeze(0)))


# --- the Grams of an open_clip image encoder ------------------------------------------------------------------


def test_grams_equal_a_forward_pass_by_hand() -> None:
    pretrained, _ = tiny_models(0, seed=12)
    visual = tiny_visual(pretrained)
    batches = image_batches((3, 2, 2), seed=13)
    ours = linear_input_grams(visual, batches, num_regmean_examples=5)
    expected = by_hand_grams(visual, batches[:2])
    assert sorted(ours) == sorted(
        f"transformer.resblocks.{i}.{name}" for i in range(ARCHITECTURE["layers"]) for name in BLOCK_WEIGHTS
    )
    assert sorted(ours) == sorted(merged_weight_keys(visual))
    for key, gram in ours.items():
        assert gram.dtype == torch.float32 and gram.device.type == "cpu"
        torch.testing.assert_close(gram.double(), expected[key], rtol=1e-5, atol=1e-6)
    # FusionBench's running float32 mean of the same rows agrees to round-off.
    running = FusionBenchGrams()
    with torch.no_grad():
        for images in batches[:2]:
            x = visual._embeds(images)
            for index, block in enumerate(visual.transformer.resblocks):
                x = by_hand_block(block, x, lambda name, inputs, i=index: running(f"{i}.{name}", inputs))
    for key, gram in ours.items():
        short = key.removeprefix("transformer.resblocks.")
        torch.testing.assert_close(gram, running.regmean_weights[short], rtol=1e-5, atol=1e-6)
    assert visual.training is False


def test_attention_values_are_out_projs_input() -> None:
    visual = tiny_visual(tiny_models(0, seed=14)[0])
    block = visual.transformer.resblocks[0]
    x = block.ln_1(visual._embeds(image_batches((3,), seed=15)[0]))
    with torch.no_grad():
        output = block.attn(x, x, x, need_weights=False)[0]
        values = attention_values(block.attn, x, x, x)
        by_hand: list[torch.Tensor] = []
        by_hand_block(block, visual._embeds(image_batches((3,), seed=15)[0]), lambda n, t: by_hand.append(t))
    torch.testing.assert_close(F.linear(values, block.attn.out_proj.weight, block.attn.out_proj.bias), output)
    torch.testing.assert_close(values, by_hand[1], rtol=1e-5, atol=1e-6)


def test_out_proj_is_never_called_by_the_attention() -> None:
    # Why the attention module's hook records out_proj's input: a hook on out_proj itself never fires.
    visual = tiny_visual()
    calls: list[int] = []
    handle = visual.transformer.resblocks[0].attn.out_proj.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        visual(image_batches((2,), seed=16)[0])
    handle.remove()
    assert calls == []


# --- RegMean++ ------------------------------------------------------------------------------------------------


def regmean_state_dict(pretrained, finetuned, grams_per_task, ratio: float = 0.95) -> dict[str, torch.Tensor]:
    merged = {}
    for key in pretrained:
        grams = torch.stack([grams[key] for grams in grams_per_task]) if key in grams_per_task[0] else None
        merged[key] = regmean(context(key, pretrained[key], [model[key] for model in finetuned], grams, ratio)).origin
    return merged


def fusionbench_regmean_plusplus(pretrained, finetuned, images, ratio: float) -> dict[str, torch.Tensor]:
    """RegMeanAlgorithmPlusPlus.run (regmean_plusplus.py L164-311) with the CLIP hooks of clip_regmean_plusplus.py,
    on open_clip modules: q/k/v_proj are the row blocks of in_proj_weight, merged one by one as transformers'
    separate modules are, and out_proj's input is the attention written out by hand."""
    merged_model = tiny_visual(pretrained)
    experts = [tiny_visual(model) for model in finetuned]
    embedding = {
        name: torch.stack([model[name] for model in finetuned]).mean(dim=0)
        for name in pretrained
        if name.startswith(PRE_BLOCK_PREFIXES)
    }
    merged_model.load_state_dict(embedding, strict=False)
    merged_params = dict(embedding)
    with torch.no_grad():
        batches_input = [[merged_model._embeds(batch) for batch in task_images] for task_images in images]
        for layer_idx, backbone_layer in enumerate(merged_model.transformer.resblocks):
            params, grams_list = defaultdict(list), []
            for task, expert in enumerate(experts):
                layer = expert.transformer.resblocks[layer_idx]
                param_dict = dict(layer.state_dict())
                for part, name in zip(param_dict.pop("attn.in_proj_weight").chunk(3), "qkv"):
                    param_dict[f"attn.{name}_proj.weight"] = part
                for name, value in param_dict.items():
                    params[name].append(value)
                hook = FusionBenchGrams()
                for x in batches_input[task]:
                    by_hand_block(layer, x, lambda name, inputs, hook=hook: hook(MODULE_NAMES[name], inputs))
                grams = hook.regmean_weights
                grams.update({f"attn.{name}_proj": grams["attn.in_proj"] for name in "qkv"})
                grams_list.append(grams)
            merged_layer = fusionbench_merging_with_regmean_weights(params, grams_list, ratio)
            merged_layer["attn.in_proj_weight"] = torch.cat([merged_layer.pop(f"attn.{n}_proj.weight") for n in "qkv"])
            backbone_layer.load_state_dict(merged_layer)
            merged_params.update({f"transformer.resblocks.{layer_idx}.{k}": v for k, v in merged_layer.items()})
            batches_input = [[backbone_layer(x) for x in task_inputs] for task_inputs in batches_input]
    return {key: merged_params.get(key, value) for key, value in pretrained.items()}


def test_one_task_gives_the_expert() -> None:
    pretrained, finetuned = tiny_models(1, seed=17)
    images = [image_batches((8, 8), seed=18)]
    merged = regmean_plusplus_visual(SPEC, pretrained, finetuned, images, 0.95, post_blocks="average")
    assert list(merged) == list(pretrained)
    for key, value in merged.items():
        # W_0 + (G')⁻¹ G' τ in float32: τ up to the inverse's round-off, which grows with G's condition number.
        moved = float((finetuned[0][key] - pretrained[key]).abs().max())
        torch.testing.assert_close(value, finetuned[0][key], rtol=0, atol=1e-3 * moved, msg=key)
    authors = regmean_plusplus_visual(SPEC, pretrained, finetuned, images, 0.95)
    for key in ("ln_post.weight", "ln_post.bias", "proj"):
        assert torch.equal(authors[key], pretrained[key])
        assert not torch.equal(merged[key], pretrained[key])


def test_equals_regmean_when_every_blocks_inputs_coincide() -> None:
    # The experts differ from θ_0 only from block 1 on, so block 1 reads the same inputs in every expert and in the
    # merged model: RegMean++ is then RegMean, bit for bit (block 0 and the embedding are θ_0 in both).
    def moved(key: str) -> bool:
        return not key.startswith(("transformer.resblocks.0.", *PRE_BLOCK_PREFIXES))

    pretrained, finetuned = tiny_models(3, seed=19, moved=moved)
    images = [image_batches((3, 2), seed=20 + task) for task in range(3)]
    grams = [linear_input_grams(tiny_visual(model), batches) for model, batches in zip(finetuned, images)]
    expected = regmean_state_dict(pretrained, finetuned, grams)
    merged = regmean_plusplus_visual(SPEC, pretrained, finetuned, images, 0.95, post_blocks="average")
    assert [key for key in pretrained if not torch.equal(merged[key], expected[key])] == []
    key = "transformer.resblocks.1.mlp.c_fc.weight"
    average = torch.stack([model[key] for model in finetuned]).mean(dim=0)
    assert float((merged[key] - average).abs().max()) > 1e-2 * float(average.abs().max())


def test_equals_fusionbenchs_procedure_and_differs_from_regmean() -> None:
    pretrained, finetuned = tiny_models(3, seed=21, scale=0.5)
    images = [image_batches((8, 8), seed=22 + task) for task in range(3)]
    ours = regmean_plusplus_visual(SPEC, pretrained, finetuned, images, 0.95)
    theirs = fusionbench_regmean_plusplus(pretrained, finetuned, images, 0.95)

    def double(model: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.double() for key, value in model.items()}

    exact = fusionbench_regmean_plusplus(
        double(pretrained), [double(model) for model in finetuned], [[b.double() for b in t] for t in images], 0.95
    )
    for key in pretrained:
        # Both float32 computations within round-off of the float64 one (c_proj's Gram is the worst conditioned:
        # the inverse's error is ~1e-5 of the largest entry, ours about half FusionBench's).
        scale = float(exact[key].abs().max())
        torch.testing.assert_close(ours[key].double(), exact[key], rtol=0, atol=1e-4 * scale, msg=key)
        torch.testing.assert_close(theirs[key].double(), exact[key], rtol=0, atol=2e-4 * scale, msg=key)
    grams = [linear_input_grams(tiny_visual(model), batches) for model, batches in zip(finetuned, images)]
    plain = regmean_state_dict(pretrained, finetuned, grams)
    key = "transformer.resblocks.1.mlp.c_fc.weight"
    assert float((ours[key] - plain[key]).abs().max()) > 1e-2 * float(plain[key].abs().max())
    for key in ("ln_post.weight", "proj"):
        assert torch.equal(ours[key], pretrained[key])


def test_regmean_plusplus_refuses_mismatched_inputs() -> None:
    pretrained, finetuned = tiny_models(2, seed=23)
    with pytest.raises(InputError, match="one per model"):
        regmean_plusplus_visual(SPEC, pretrained, finetuned, [image_batches((2,), seed=0)])
    with pytest.raises(InputError, match="no training images"):
        regmean_plusplus_visual(SPEC, pretrained, finetuned, [[], []])


def test_recording_grams_on_one_block_keys_relative_to_it() -> None:
    visual = tiny_visual()
    block = visual.transformer.resblocks[1]
    accumulator = GramAccumulator()
    with torch.no_grad(), recording_grams(block, accumulator):
        block(visual._embeds(image_batches((2,), seed=24)[0]))
    assert sorted(accumulator.grams()) == sorted(BLOCK_WEIGHTS)
    assert accumulator.rows["attn.in_proj_weight"] == 2 * (1 + (SPEC.image_size // ARCHITECTURE["patch_size"]) ** 2)
