"""lora-dispatch: multi-LoRA kernels for inference engines.

Public API (see DESIGN.md): :class:`LoRAWeights`, :class:`LoRABatch`, :func:`add_lora`,
:func:`lora_shrink`, :func:`lora_expand`, :func:`info`.
"""

from .batch import LoRABatch
from .devices import BackendUnavailableError
from .info import info
from .nn import LoRALinear, LoRAModel, patch_model
from .ops import add_lora, lora_expand, lora_shrink
from .peft import PeftAdapterInfo, llama_targets, load_peft_adapter
from .weights import LoRAWeights

__version__ = "0.1.0"

__all__ = [
    "LoRABatch",
    "LoRAWeights",
    "BackendUnavailableError",
    "add_lora",
    "lora_expand",
    "lora_shrink",
    "info",
    "load_peft_adapter",
    "llama_targets",
    "PeftAdapterInfo",
    "patch_model",
    "LoRALinear",
    "LoRAModel",
    "__version__",
]
