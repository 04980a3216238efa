"""The linear maps of a llama layer as the packed decoder runs them: fused, and with half-precision weights on CPUs
that have fbgemm.

A decode step of a 135M model on 2 CPU cores is bound by reading the weights, not by arithmetic: every step streams all
540 MB of fp32 projections and LM head from memory for a few dozen rows (inside a step the `[32, 576] x [576, 1536]`
projection ran at about 60 GFLOP/s on an AVX2 machine, against 100 to 165 for the same shape on warm caches). fbgemm's
fp16 GEMM keeps the weights in half precision (half the bytes) and does the arithmetic in fp32, so activations are
never rounded. In a profile of the candidate stage (32 GSM8K prompts, 64 new tokens) on that machine the decode steps'
matmuls went from 8.9 s to 4.1 s, and the stage from 110 to 166 tokens/s; on an AVX-512 CPU (Zen 5), where fbgemm's
GEMM runs at about 430 GFLOP/s against 140-160 for MKL's fp32 one, from 186 to 345. The weights lose what half
precision cannot hold (relative error below 5e-4 per weight): on 48 GSM8K answers, teacher-forced, the next-token KL
divergence from the fp32 model was below 1e-5 and the argmax agreed on 99.9% of positions (a test checks the decode
path on the embedded model). int8 (fbgemm's dynamic quantization) was measured too and dropped: with one activation
scale per tensor the argmax agreed on 47% of positions, and with one scale per row on 79% (KL 0.25).

Fusing q, k and v (and gate and up) into one matrix each makes fewer, wider GEMMs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Linear = Callable[[torch.Tensor], torch.Tensor]
WeightPrecision = Literal["float16", "float32"]
WEIGHT_PRECISIONS: tuple[WeightPrecision, ...] = ("float16", "float32")


def half_weights_available() -> bool:
    """True when this torch build has fbgemm's fp16-weight GEMM (x86 CPU builds do)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
        torch.ops.quantized, "linear_prepack_fp16"
    )


def require_half_weights() -> None:
    if not half_weights_available():
        raise ValueError("half-precision weights need fbgemm, which this torch build lacks; use 'float32'")


def default_precision() -> WeightPrecision:
    return "float16" if half_weights_available() else "float32"


def fused(modules: list[torch.nn.Linear], precision: WeightPrecision) -> Linear:
    """One map whose output is the outputs of `modules` side by side, in order.

    float16: the concatenated weights rounded to half precision and packed for fbgemm (fp32 arithmetic).
    float32: the modules' own weights, one GEMM each, so no copy of the weights is made.
    """
    if precision == "float32":
        if len(modules) == 1:
            return modules[0]
        return lambda x: torch.cat([module(x) for module in modules], dim=-1)
    weight = torch.cat([module.weight.detach() for module in modules]).float()
    packed = torch.ops.quantized.linear_prepack_fp16(weight, _fused_bias(modules))
    return lambda x: torch.ops.quantized.linear_dynamic_fp16(x, packed)


def _fused_bias(modules: list[torch.nn.Linear]) -> torch.Tensor | None:
    if all(module.bias is None for module in modules):
        return None
    return torch.cat([m.bias.detach().float() if m.bias is not None else torch.zeros(m.out_features) for m in modules])


@dataclass
class LayerProjections:
    qkv: Linear  # -> [q | k | v]
    o: Linear
    gate_up: Linear  # -> [gate | up]
    down: Linear
    act: Callable[[torch.Tensor], torch.Tensor]
    intermediate: int

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.intermediate, dim=-1)
        return self.down(self.act(gate) * up)


def layer_projections(layer, precision: WeightPrecision) -> LayerProjections:
    attn, mlp = layer.self_attn, layer.mlp
    return LayerProjections(
        qkv=fused([attn.q_proj, attn.k_proj, attn.v_proj], precision),
        o=fused([attn.o_proj], precision),
        gate_up=fused([mlp.gate_proj, mlp.up_proj], precision),
        down=fused([mlp.down_proj], precision),
        act=mlp.act_fn,
        intermediate=mlp.gate_proj.out_features,
    )


@dataclass
class ModelProjections:
    """Every layer's maps and the LM head, built from the model's weights as they were at `versions`."""

    layers: list[LayerProjections]
    head: Linear
    versions: tuple[tuple[int, int], ...]


def parameter_versions(parameters) -> tuple[tuple[int, int], ...]:
    """Where each parameter lives and how often it was changed in place; a training step or a load changes it."""
    return tuple((p.data_ptr(), p._version) for p in parameters)


def weight_versions(model) -> tuple[tuple[int, int], ...]:
    return parameter_versions(model.parameters())


def model_projections(model, precision: WeightPrecision) -> ModelProjections:
    layers = [layer_projections(layer, precision) for layer in model.model.layers]
    return ModelProjections(layers, fused([model.lm_head], precision), weight_versions(model))


class HalfWeightLinear(torch.nn.Linear):
    """An `nn.Linear` that, in CPU inference on fp32 inputs, multiplies by a half-precision packed copy of its weight
    (fbgemm, fp32 arithmetic), rebuilt when the weight is replaced or changed in place; with gradients enabled, or on
    other devices and dtypes, it is a plain `nn.Linear`.

    It shares the weight and bias `Parameter`s of the module it stands in for, so state dicts, weight tying and
    parameter counts do not change, and PEFT wraps it like any `nn.Linear` (a LoRA layer adds its own product on
    top of the base layer's). Used by `rlrf-hub serve`, which runs the model's own forward pass.
    """

    @classmethod
    def sharing(cls, linear: torch.nn.Linear) -> HalfWeightLinear:
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        module.weight, module.bias = linear.weight, linear.bias
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
            return super().forward(x)
        return torch.ops.quantized.linear_dynamic_fp16(x, self._packed_weight())

    def _packed_weight(self):
        key = parameter_versions(self.parameters())
        if self.__dict__.get("_packed_key") != key:
            bias = None if self.bias is None else self.bias.detach().float()
            self._packed = torch.ops.quantized.linear_prepack_fp16(self.weight.detach().float(), bias)
            self._packed_key = key
        return self._packed


def use_half_weights(model: torch.nn.Module) -> int:
    """Put a `HalfWeightLinear` in place of every plain `nn.Linear` of `model`; returns how many were replaced."""
    require_half_weights()
    targets = [(name, module) for name, module in model.named_modules() if type(module) is torch.nn.Linear]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, HalfWeightLinear.sharing(module))
    return len(targets)
