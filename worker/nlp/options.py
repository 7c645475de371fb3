"""How the engine runs a model: one value built from Settings (`Settings.engine_options()`) and used
alike by serving, evaluation, the retrain gate and the benchmarks, so that what is measured is what
is served. No torch here: the CLI builds options without paying for the import."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class EngineOptions:
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 | int8 (CPU)
    token_budget: int = 0  # padded tokens per forward pass; 0: batching.default_token_budget(device)
    max_length: int = 512  # tokens per window, capped at the model's positions
    stride: int = 128  # tokens shared by consecutive windows of a long review
    max_chars: int = 100_000  # longer texts are cut to this before tokenizing
    window_rule: str = "mean"  # how a long review's windows are combined: "mean" or "owned"

    def with_(self, **changes) -> "EngineOptions":
        return replace(self, **changes)
