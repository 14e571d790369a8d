"""A tiny random-weight Qwen-VL judge, built locally: no hub, no download, a few hundred KB.

`build_tiny_model` writes a complete model directory (weights, config, a byte-level BPE tokenizer trained
here, the Qwen chat template, an image processor capped at 16 image tokens per image, and a processor
without a video processor) that `AutoProcessor` / `AutoModelForImageTextToText.from_pretrained` load
once `register_processors()` has run (building or locating a tiny model runs it). It exists to test the
machinery (prompting, images, constrained decoding, batching) on machines without weights; its judgments
mean nothing.

Why a processor subclass: the stock Qwen-VL processors build a video processor that needs torchvision,
which cannot be installed beside a CPU-only torch from the registry. `register_processors()` registers the
image-only subclasses with `AutoProcessor` (explicitly, never as a side effect of an import); without that
registration `AutoProcessor.from_pretrained` silently returns a bare tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from transformers import AutoProcessor, PretrainedConfig, PreTrainedTokenizerFast
from transformers.models.qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl import Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin

from flexjudge.backends._cache import cache_root
from flexjudge.errors import UsageError

__all__ = [
    "TINY_VERSION",
    "Qwen2VLImageOnlyProcessor",
    "Qwen2_5_VLImageOnlyProcessor",
    "Qwen3VLImageOnlyProcessor",
    "TinyArch",
    "build_tiny_model",
    "build_tokenizer",
    "cache_root",
    "image_only_processor_class",
    "register_processors",
    "tiny_model_dir",
]

TinyArch = Literal["qwen2_5_vl", "qwen3_vl"]

TINY_VERSION = 1
"""Bumped whenever the build changes what it writes, so cached directories of an old build are not reused."""

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The Qwen2-VL / Qwen2.5-VL chat template, restated: a default system turn, one
# <|vision_start|><|image_pad|><|vision_end|> block per image part, text parts verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Pre-tokenizer split: a quoted identifier ("reason_1") is one piece so BPE can learn it as one token;
# otherwise Qwen2-like pieces (letters with one leading non-letter, single digits, punctuation runs),
# except that a quote never joins a punctuation run, where it would swallow the next key's opening quote.
_SPLIT_PATTERN = (
    r'"[A-Za-z_][A-Za-z0-9_]*"'
    r"|(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}"
    r'|"[^\s\p{L}\p{N}"]*'
    r'| ?[^\s\p{L}\p{N}"]+[\r\n]*'
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Keys of the judgment wire formats (flex, native pair and point). Only the tokenizer's efficiency
# depends on this list: a missing key is still encodable, byte by byte.
_JSON_KEYS_TEXT = """
analysis attributes_and_actions candidate cat_reason cat_winner categories constraints criteria
dimensions dims evidence evidence_1 evidence_2 intent modality name observations origin preferences
prompt reason reason_1 reason_2 score score_1 score_2 scoring style subjects verdict winner label
rationale items tags summary
"""

_WORDS_TEXT = """
the a an of in on with and or but is are was shows image video picture frame candidate prompt
subject subjects action actions colour color light lighting shadow texture detail details clear
sharp blurry composition balance harmony style realistic realism quality aesthetic aesthetics
semantic alignment accuracy temporal motion camera narrative cinematography better worse similar
both neither missing correct wrong extra hand face text legible cat dog red blue green sky car child
tree house water fire stable smooth jitter artifact artifacts physics plausible because first second
more less than fully partly mostly matches follows ignores renders depicts
"""


def _corpus() -> list[str]:
    """Text the tokenizer learns from: English phrases, judgment JSON, numbers (fixed: no randomness)."""
    words, keys = _WORDS_TEXT.split(), _JSON_KEYS_TEXT.split()
    lines: list[str] = []
    n_words = len(words)
    for i in range(300):
        lines.append(" ".join(words[(i * 7 + k * 3) % n_words] for k in range(14)))
        sentence = " ".join(words[(i * 5 + k) % n_words] for k in range(8)).capitalize() + "."
        winner = f"Image {i % 2 + 1}" if i % 3 else f"Video {i % 2 + 1}"
        score = i % 11
        obj: dict[str, Any] = {key: sentence for key in keys[(i % 5) :: 5]}
        obj.update(
            {
                "categories": [
                    {
                        "name": "Semantic Alignment & Accuracy",
                        "dims": [
                            {
                                "name": "Subject Completeness",
                                "reason_1": sentence,
                                "reason_2": sentence,
                                "score_1": score,
                                "score_2": 10 - score,
                            }
                        ],
                        "cat_reason": sentence,
                        "cat_winner": winner,
                    }
                ],
                "winner": winner,
                "score": score,
                "items": [sentence, winner],
            }
        )
        # Compact and spaced separators both occur in the wild; the engines emit compact JSON.
        lines.append(json.dumps(obj, separators=(",", ":")))
        lines.append(json.dumps(obj))
    lines += [str(n) for n in range(101)]
    return lines


def build_tokenizer(
    vocab_size: int = 1024, corpus: Iterable[str] | None = None, split_pattern: str = _SPLIT_PATTERN
) -> PreTrainedTokenizerFast:
    """The tiny models' byte-level BPE tokenizer (special tokens, chat template, every byte encodable),
    learnt from `corpus` (default: a fixed corpus of English phrases, judgment JSON and numbers) after
    splitting by `split_pattern`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0..6
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(_corpus() if corpus is None else corpus, trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=8192,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def _image_only_init(
    self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None
) -> None:
    # Restates the stock __init__ minus the video processor: ProcessorMixin derives its sub-processors
    # from this signature, so leaving `video_processor` out is what keeps torchvision out.
    self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
    self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
    self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
    self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
    self.vision_start_token = "<|vision_start|>"
    self.vision_end_token = "<|vision_end|>"
    self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
    self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)
    ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)  # type: ignore[no-untyped-call]


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images only (no video processor, so no torchvision)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None) -> None:
        _image_only_init(self, image_processor, tokenizer, chat_template)


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor for images only (no video processor, so no torchvision)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None) -> None:
        _image_only_init(self, image_processor, tokenizer, chat_template)


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """Qwen3-VL processor for images only (no video processor, so no torchvision)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None) -> None:
        _image_only_init(self, image_processor, tokenizer, chat_template)


_IMAGE_ONLY: dict[str, type[ProcessorMixin]] = {  # by config `model_type`, as transformers maps them
    "qwen2_vl": Qwen2VLImageOnlyProcessor,
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
    "qwen3_vl": Qwen3VLImageOnlyProcessor,
    "qwen3_vl_moe": Qwen3VLImageOnlyProcessor,
    "qwen3_5": Qwen3VLImageOnlyProcessor,
    "qwen3_5_moe": Qwen3VLImageOnlyProcessor,
}


def image_only_processor_class(model_type: str) -> type[ProcessorMixin] | None:
    """The image-only processor for a config's `model_type`, or None when there is none."""
    return _IMAGE_ONLY.get(model_type)


_registered = threading.Event()
_register_lock = threading.Lock()


def register_processors() -> None:
    """Make `AutoProcessor` know the image-only processors, which saved tiny models (and stock Qwen-VL
    checkpoints loaded by flexjudge) name; idempotent and cheap after the first call."""
    if _registered.is_set():
        return
    with _register_lock:
        if _registered.is_set():
            return
        # Each class is registered under a private config class of its own: `AutoProcessor` resolves a
        # saved `processor_class` name through the registry, and the stock Qwen configs keep their own.
        for cls in dict.fromkeys(_IMAGE_ONLY.values()):
            marker = type(
                f"_{cls.__name__}Config", (PretrainedConfig,), {"model_type": f"flexjudge_{cls.__name__}"}
            )
            AutoProcessor.register(marker, cls, exist_ok=True)  # type: ignore[no-untyped-call]
        _registered.set()


def _build_processor(tokenizer: PreTrainedTokenizerFast, arch: TinyArch) -> ProcessorMixin:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    patch = 16 if arch == "qwen3_vl" else 14
    factor = patch * 2  # one merged image token covers factor x factor pixels
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        temporal_patch_size=2,
        merge_size=2,
        min_pixels=factor * factor,
        max_pixels=factor * factor * 16,  # at most 16 image tokens per image
    )
    return _IMAGE_ONLY[arch](
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def _build_model(
    tokenizer: PreTrainedTokenizerFast,
    arch: TinyArch,
    seed: int,
    text_overrides: dict[str, Any] | None = None,
) -> Any:
    import torch

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # vocab_size == len(tokenizer): xgrammar's matcher crashes on ids of a padded vocabulary.
    text: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        # Qwen2/2.5-VL: sum(mrope_section) == head_dim / 2 (head_dim 16 here).
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    text.update(text_overrides or {})
    common: dict[str, Any] = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    model_cls: Any
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "out_hidden_size": text["hidden_size"],
        }
        config: PretrainedConfig = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
        model_cls = Qwen2_5_VLForConditionalGeneration
    elif arch == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        text = dict(text, head_dim=16)
        text["rope_parameters"] = dict(text["rope_parameters"], mrope_interleaved=True)
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": text["hidden_size"],
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [1],
        }
        config = Qwen3VLConfig(text_config=text, vision_config=vision, **common)
        model_cls = Qwen3VLForConditionalGeneration
    else:
        raise UsageError(f"unknown tiny architecture {arch!r}: use 'qwen2_5_vl' or 'qwen3_vl'")

    # A private RNG stream: the same seed gives the same weights whatever the caller did to torch's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    generation = model.generation_config
    generation.eos_token_id = ids["<|im_end|>"]
    generation.pad_token_id = ids["<|endoftext|>"]
    generation.bos_token_id = ids["<|endoftext|>"]
    return model


def build_tiny_model(
    directory: str | Path,
    *,
    arch: TinyArch = "qwen2_5_vl",
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    text_overrides: dict[str, Any] | None = None,
) -> Path:
    """Build a tiny random-weight Qwen-VL model with its tokenizer and processor into `directory`.

    The same `arch` and `seed` give byte-identical weights and tokenizer. Load it with
    `AutoProcessor.from_pretrained(directory)` and `AutoModelForImageTextToText.from_pretrained(directory)`
    (this registers the image-only processors they need). `tokenizer` replaces the one trained here
    (benchmarks use a realistic ~150k-token vocabulary); it must hold the Qwen special tokens.
    `text_overrides` changes the language model's config (benchmarks give it a real model's width and
    depth: `hidden_size`, `num_hidden_layers`, `intermediate_size`, heads, `mrope_section`). Returns the
    directory.
    """
    from transformers.utils import logging

    hf_logging: Any = logging  # untyped module

    register_processors()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or build_tokenizer()
    processor = _build_processor(tokenizer, arch)
    model = _build_model(tokenizer, arch, seed, text_overrides)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a progress bar for a 1 MB file is noise
    # With torch.distributed initialized, transformers writes weights only on rank 0; this model is each
    # process's own build (ranks may build it at once under torchrun), so every process writes it whole.
    model.should_save_on_this_rank = lambda is_main_process: True
    try:
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    missing = [name for name in ("config.json", "model.safetensors") if not (directory / name).is_file()]
    if missing:  # never publish a model a loader would choke on
        raise RuntimeError(f"the tiny model build in {directory} wrote no {', '.join(missing)}")
    info = {"flexjudge_tiny_version": TINY_VERSION, "arch": arch, "seed": seed}
    (directory / "flexjudge_tiny.json").write_text(json.dumps(info, indent=2) + "\n")
    return directory


def tiny_model_dir(seed: int = 0, *, arch: TinyArch = "qwen2_5_vl") -> Path:
    """The tiny model for `seed`, built once into the cache and reused afterwards.

    The build goes to a temporary directory next to the final one and is renamed into place, so a
    crashed or concurrent build never leaves a half-written model where a reader would take it.
    """
    register_processors()
    root = cache_root()
    final = root / f"tiny-{arch}-{seed}-v{TINY_VERSION}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        build_tiny_model(tmp, arch=arch, seed=seed)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return final
