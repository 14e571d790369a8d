"""Finding and loading a local model: tiny aliases, directories, hub ids (cache first), device and dtype.

A hub id is looked up in the local Hugging Face cache first and loaded from its snapshot directory, so a
cached model never touches the network. Only when it is not cached is the hub asked, and only after a
quick check that it can be: on a machine without hub access (`HF_HUB_OFFLINE`, no route, a firewall that
drops packets) transformers would otherwise spend minutes retrying before failing; this fails in about a
second and says how to point at the weights or at a server.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from flexjudge.errors import BackendError, UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["LOAD_HINT", "TINY_ALIASES", "auto_device", "auto_dtype", "load", "resolve"]

TINY_ALIASES: dict[str, Literal["qwen2_5_vl", "qwen3_vl"]] = {
    "tiny-random": "qwen2_5_vl",
    "tiny-random-qwen2.5-vl": "qwen2_5_vl",
    "tiny-random-qwen3-vl": "qwen3_vl",
}
LOAD_HINT = (
    "Point `model=` at a local directory holding the weights (config.json, *.safetensors and the processor "
    "files), or at a hub id already in the local cache (`hf download <id>` on a machine with network "
    "access, then copy the cache); or judge through a server that runs the model (vLLM, SGLang, "
    "`flexjudge serve`) with `base_url=` (`--base-url` on the command line); `model='tiny-random'` runs a "
    "tiny random-weight model to test the machinery."
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_PROBE_SECONDS = 1.5
"""How long the hub may take to answer before it counts as unreachable."""


def resolve(model: str) -> Path | str:
    """The directory to load `model` from, or the hub id when the hub must be asked."""
    if model in TINY_ALIASES:
        from flexjudge.backends.tiny import tiny_model_dir

        return tiny_model_dir(0, arch=TINY_ALIASES[model])
    path = Path(model).expanduser()
    if path.exists():
        return path
    if _HUB_ID.fullmatch(model) and not model.startswith("."):
        return _hub(model)
    raise BackendError(f"no model directory at {model}. {LOAD_HINT}", retryable=False)


def _hub(repo_id: str) -> Path | str:
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return Path(cached).parent  # the snapshot directory: loading it asks the hub nothing
    if _offline():
        raise BackendError(
            f"cannot load model {repo_id!r}: it is not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and the hub is switched off (HF_HUB_OFFLINE). {LOAD_HINT}",
            retryable=False,
        )
    endpoint = constants.ENDPOINT
    problem = _unreachable(endpoint)
    if problem is not None:
        raise BackendError(
            f"cannot load model {repo_id!r}: it is not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and the hub at {endpoint} cannot be reached ({problem}). "
            + LOAD_HINT,
            retryable=False,
        )
    return repo_id


def _offline() -> bool:
    from huggingface_hub import constants

    # The hub reads HF_HUB_OFFLINE once, at import; a caller may set it later in the process.
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(constants.HF_HUB_OFFLINE)


def _unreachable(endpoint: str) -> str | None:
    """Why the hub cannot be reached (None when it answers at all), decided within `HUB_PROBE_SECONDS`.

    Any HTTP answer counts as reachable: the hub's own errors (a missing or gated repository) are then
    reported by the download itself. The request goes through the hub's own HTTP session, so proxies and
    certificates set for the hub apply; it runs on a thread because name resolution ignores timeouts."""
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            from huggingface_hub import get_session

            get_session().head(endpoint, timeout=HUB_PROBE_SECONDS)
            outcome.append(None)
        except Exception as exc:  # any failure to get an answer, whatever the HTTP stack calls it
            outcome.append(type(exc).__name__)

    thread = threading.Thread(target=probe, name="flexjudge-hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS + 0.3)
    return outcome[0] if outcome else f"no answer within {HUB_PROBE_SECONDS} s"


def auto_device(device: str | None) -> str:
    """`device`, or for None the first GPU when torch sees one, else the CPU."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def auto_dtype(device: str, dtype: str | torch.dtype | None) -> torch.dtype | Literal["auto"]:
    """`dtype` as torch takes it. None: bfloat16 on a GPU that supports it (float16 on an older one),
    float32 elsewhere (CPU kernels are fastest and exact in float32). "auto": the checkpoint's own."""
    import torch

    if dtype is None:
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    chosen = getattr(torch, str(dtype), None)
    if not isinstance(chosen, torch.dtype):
        raise UsageError(
            f"unknown dtype {dtype!r}: use 'bfloat16', 'float16', 'float32', 'auto' or None (automatic)"
        )
    return chosen


def load(name: str, path: Path | str, device: str, dtype: torch.dtype | Literal["auto"]) -> tuple[Any, Any]:
    """(processor, model) from `path`, the processor image-only when the stock one cannot load."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from flexjudge.backends import tiny

    tiny.register_processors()  # saved tiny models name the image-only processors
    auto_model: Any = AutoModelForImageTextToText  # untyped
    auto_processor: Any = AutoProcessor
    try:
        model = auto_model.from_pretrained(
            path, dtype=dtype, device_map=None if device == "cpu" else device
        ).eval()
    except Exception as exc:  # transformers and the hub raise OSError, ValueError, KeyError, ...
        reason = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise BackendError(
            f"cannot load model {name!r}: {reason}. {LOAD_HINT}", retryable=False, original=exc
        ) from None
    processor: Any = None
    try:
        processor = auto_processor.from_pretrained(path)
    except Exception:  # stock Qwen-VL processors need torchvision for their video processor
        processor = None
    if processor is None or not hasattr(processor, "image_processor"):
        image_only = tiny.image_only_processor_class(getattr(model.config, "model_type", ""))
        try:
            processor = image_only.from_pretrained(path) if image_only is not None else None
        except Exception as exc:
            raise BackendError(
                f"cannot load the processor of {name!r}: {exc}", retryable=False, original=exc
            ) from None
    if processor is None:
        raise BackendError(
            f"{name!r} has no image processor: flexjudge needs a vision-language model. {LOAD_HINT}",
            retryable=False,
        )
    processor.tokenizer.padding_side = "left"  # batched generation continues every row from its end
    return processor, model
