"""ggml's tensor types and llama.cpp's file types by name, from the engine's own constants (llama_cpp), once.

`FILE_TYPES` are llama-quantize's names for `llama_model_quantize`'s ftype (tools/quantize/quantize.cpp
QUANT_OPTIONS, COPY left out); `TENSOR_TYPES` the ggml types llama.cpp quantizes a tensor to
(ggml_quantize_chunk: an override to any other, F64, I32, Q8_1..., aborts it); `GGML_TYPES` every ggml type id.
"""

from __future__ import annotations

import llama_cpp.llama_cpp as L

from ..errors import GgtoolError

GGML_TYPES: dict[str, int] = {n[len("GGML_TYPE_"):]: int(getattr(L, n)) for n in dir(L)
                              if n.startswith("GGML_TYPE_") and n != "GGML_TYPE_COUNT"}
GGML_TYPE_COUNT = int(L.GGML_TYPE_COUNT)  # the end marker of a tensor-type override array, as llama-quantize's

_QUANT_OPTIONS = ["Q4_0", "Q4_1", "MXFP4_MOE", "Q5_0", "Q5_1", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M",
                  "TQ1_0", "TQ2_0", "Q2_K", "Q2_K_S", "IQ3_XXS", "IQ3_S", "IQ3_M", "IQ3_XS", "Q3_K_S", "Q3_K_M",
                  "Q3_K_L", "IQ4_NL", "IQ4_XS", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16",
                  "F32", "Q1_0"]
FILE_TYPES: dict[str, int] = {n: int(getattr(L, "LLAMA_FTYPE_ALL_F32" if n == "F32" else f"LLAMA_FTYPE_MOSTLY_{n}"))
                              for n in _QUANT_OPTIONS
                              if hasattr(L, "LLAMA_FTYPE_ALL_F32" if n == "F32" else f"LLAMA_FTYPE_MOSTLY_{n}")}
FILE_TYPE_NAMES = {v: k for k, v in FILE_TYPES.items()}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

TENSOR_TYPES = [n for n in ("F32", "F16", "BF16", "Q1_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "MXFP4", "NVFP4",
                            "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0", "IQ2_XXS", "IQ2_XS", "IQ2_S",
                            "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS") if n in GGML_TYPES]
# tensor types llama.cpp refuses to make without an importance matrix (llama_model_quantize_impl)
TENSOR_TYPES_NEEDING_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS"})
# file types whose recipe puts some tensor in one of those (IQ2_M and IQ3_XS through IQ2_S/IQ3_XXS; Q2_K_S's Q2_K)
FILE_TYPES_NEEDING_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS",
                                        "Q2_K_S"})


def file_type(name: str) -> str:
    """llama-quantize's canonical file-type name for `name` given in any case (aliases resolved)."""
    key = name.strip().upper()
    key = ALIASES.get(key, key)
    if key not in FILE_TYPES:
        raise GgtoolError(f"unknown quantization type {name!r}", f"choose from {', '.join(FILE_TYPES)}")
    return key


def kv_cache_type(name: str) -> int:
    """The ggml type id of a KV-cache type named as llama-cli's --cache-type-k/-v take it (f16, q8_0, ...)."""
    return GGML_TYPES[name.upper()]
