"""Tokenizers for PI0, loaded from local directories only (no hub access, ever).

* Full PI0: PaliGemma's SentencePiece tokenizer; pass its local directory as `tokenizer_path`.
* Tiny preset: a small BPE tokenizer built by `build_tiny_tokenizer` from the LIBERO task
  vocabulary and shipped in ``assets/tiny_tokenizer``. It follows Gemma's special-token ids
  (<pad>=0, <eos>=1, <bos>=2) plus <unk>=3, lower-cases its input, and loads through the same
  `transformers.AutoTokenizer` path as the real one, so tests exercise the real code.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0, 1, 2, 3 (Gemma order + unk)
TINY_VOCAB_SIZE = 512  # upper bound; training stops once every corpus word is one token (457)

# Every word of LIBERO's task descriptions (all suites; collected from the benchmark's BDDL
# language lines and task names), plus generic words likely in new prompts.
LIBERO_WORDS = (
    "a akita alphabet and at back basket bbq beside between black book both bottle bottom bowl box "
    "butter by cabinet caddy center cheese chocolate close compartment cookie cookies cream cup door "
    "drawer dressing from front frying grab in inside into involves it juice ketchup layer left lift "
    "meal microwave middle milk mixing moka move mug next not object of off on open orange organizing "
    "pan pick place plate popcorn pot pots prepare preparing pudding push put quick rack ramekin red "
    "right s salad sauce set shelf slide snack soup stack stove switch table take task the them to "
    "tomato top tray turn under up using white wine wooden yellow"
)
GENERIC_WORDS = (
    "blue green gray grey brown purple pink stick robot arm gripper hand object item left right near "
    "far above below onto over then after before first second third one two three four five pour "
    "grasp release lower raise rotate flip press button handle lid can cup box bin"
)


def load_tokenizer(path: str | os.PathLike | None):
    """Load a tokenizer from a LOCAL directory via transformers' AutoTokenizer (local_files_only).

    Raises FileNotFoundError with what to pass when `path` is None or not a directory.
    """
    from transformers import AutoTokenizer

    hint = (
        "pass `tokenizer_path` pointing at a local directory holding PaliGemma's tokenizer "
        "(tokenizer.model / tokenizer.json + tokenizer_config.json); for the tiny preset use "
        "openpi_pytorch_ori/pi0/assets/tiny_tokenizer. Nothing is downloaded."
    )
    if path is None:
        raise FileNotFoundError(f"No tokenizer path given: {hint}")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Tokenizer directory {str(path)!r} does not exist: {hint}")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise FileNotFoundError(f"Tokenizer directory {str(path)!r} holds no tokenizer.json or tokenizer.model: {hint}")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.bos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError(f"Tokenizer at {str(path)!r} needs a <bos> and a <pad> token for PI0 prompts.")
    return tokenizer


def build_tiny_tokenizer(out_dir: str | os.PathLike, vocab_size: int = TINY_VOCAB_SIZE) -> Path:
    """Train a small BPE tokenizer on the LIBERO vocabulary and save it (transformers format).

    Lower-cased, sentencepiece-style word boundaries ("▁"), a character alphabet covering
    lower-case ASCII letters, digits, punctuation and "\\n" (so ordinary prompts never need <unk>).
    Returns `out_dir`.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-_()/\n") + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet,
        limit_alphabet=len(alphabet), show_progress=False,
    )
    corpus = sorted(set(LIBERO_WORDS.split()) | set(GENERIC_WORDS.split()))
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        model_max_length=4096,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out_dir))
    _use_portable_tokenizer_class(out_dir / "tokenizer_config.json")
    logger.info("Built tiny tokenizer with %d tokens in %s", len(wrapped), out_dir)
    return out_dir


def _use_portable_tokenizer_class(config_path: Path) -> None:
    """Name the class `PreTrainedTokenizerFast` (understood by transformers 4.x and 5.x) rather
    than 5.x's `TokenizersBackend`, so the shipped files load with either."""
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def tokenize_prompts(tokenizer, prompts: list[str], max_length: int):
    """Format prompts as <bos> + task + "\\n", right-pad / truncate to max_length.

    Returns (token_ids int64 (B, max_length), masks bool (B, max_length)). <bos> is prepended
    explicitly (not through the tokenizer's post-processor) so every tokenizer behaves the same.
    """
    import torch

    texts = [prompt.strip().replace("_", " ").replace("\n", " ") + "\n" for prompt in prompts]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    token_ids = torch.full((len(prompts), max_length), tokenizer.pad_token_id, dtype=torch.int64)
    masks = torch.zeros((len(prompts), max_length), dtype=torch.bool)
    for row, ids in enumerate(encoded):  # ragged python lists; per-string work is inherent here
        ids = [tokenizer.bos_token_id, *ids]
        if len(ids) > max_length:
            logger.warning("Prompt %r has %d tokens; truncated to tokenizer_max_length=%d",
                           prompts[row], len(ids), max_length)
            ids = ids[:max_length]
        token_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        masks[row, : len(ids)] = True
    return token_ids, masks
