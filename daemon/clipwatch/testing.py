"""Build a CLIP model directory with random weights, for tests and benchmarks (no model hub here).

`build_random_clip(dir)` writes an ordinary Hugging Face CLIP directory (config, weights, processor and a
byte-level tokenizer) that sentence-transformers loads exactly as it loads `clip-ViT-B-32`. `tiny=True`
makes a model of well under 1 MB that embeds 32x32 images (for tests); `tiny=False` makes the ViT-B/32
architecture itself (for throughput figures: same cost as the real model, meaningless similarities).
"""

from __future__ import annotations

from pathlib import Path


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE tokenizers (GPT-2, CLIP) use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _byte_vocab() -> dict[str, int]:
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}


def build_random_clip(directory: str | Path, *, tiny: bool = True, projection_dim: int = 512, seed: int = 0,
                      image_size: int = 32) -> Path:
    """`image_size` (tiny models only): the input size; 224 gives a tiny model with ViT-B/32's geometry
    (224 px input, 32 px patches), for tests of the preprocessing."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    directory = Path(directory)
    vocab = _byte_vocab()
    special = dict(vocab_size=len(vocab), bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
                   pad_token_id=len(vocab) - 1)
    if tiny:
        config = CLIPConfig(
            text_config=dict(**special, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=image_size, patch_size=8 if image_size == 32 else 32),
            projection_dim=projection_dim,
        )
        size = image_size
    else:
        config = CLIPConfig(text_config=special, projection_dim=projection_dim)
        size = 224
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()  # type: ignore[no-untyped-call]  # transformers' own annotations stop here
    if tiny:
        # With random weights, the class token and position embeddings (the same for every input) dominate
        # a tiny model's output, and every image gets nearly the same vector (cosine ~0.98). Without them,
        # different images get different vectors, as with the real model, and a resized copy stays ~1.0.
        with torch.no_grad():
            model.vision_model.embeddings.class_embedding.zero_()
            model.vision_model.embeddings.position_embedding.weight.mul_(0.01)
    model.save_pretrained(directory)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)  # type: ignore[no-untyped-call]
    processor.save_pretrained(directory)
    return directory
