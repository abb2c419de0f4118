"""Similarity search, comparison and bring-your-own vectors: what `search`, `compare` and `import` share."""

from __future__ import annotations

import base64
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from .embedder import Embedder
from .errors import ClipwatchError

SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BadVector(ClipwatchError):
    """A vector given by the user is not a list of finite numbers of the right length."""


def parse_vector(value: Any, dimension: int | None = None, what: str = "vector") -> np.ndarray:
    """A JSON list of numbers (text or already parsed) as float32; checks length and finiteness."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadVector(f"{what}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, list) or not value or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise BadVector(f"{what}: expected a JSON list of numbers")
    vector = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(vector)):
        raise BadVector(f"{what}: contains NaN or infinity")
    if dimension is not None and len(vector) != dimension:
        raise BadVector(f"{what}: has {len(vector)} dimensions, the table holds {dimension}")
    return vector.astype(np.float32)


def normalised(vector: np.ndarray, what: str = "vector") -> np.ndarray:
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm == 0 or not math.isfinite(norm):
        raise BadVector(f"{what}: a zero vector has no direction to compare")
    return (vector / norm).astype(np.float32)


def read_vector_argument(arg: str, what: str) -> np.ndarray | None:
    """`[0.1, ...]` or a .json file holding such a list: the vector; anything else: None (an image path)."""
    if arg.lstrip().startswith("["):
        return parse_vector(arg, what=what)
    if arg.endswith(".json") and os.path.isfile(arg):
        with open(arg, encoding="utf-8") as f:
            return parse_vector(f.read(), what=f"{what} ({arg})")
    return None


def query_vector(request: dict[str, Any], dimension: int, embedder: Callable[[], Embedder],
                 max_image_pixels: int) -> np.ndarray:
    """The unit vector a search request asks about: {"vector": [...]}, {"text": "..."} or {"image": base64}.
    `embedder` is called only when the model is needed (a text or an image)."""
    kinds = [k for k in ("vector", "text", "image") if request.get(k) is not None]
    if len(kinds) != 1:
        raise BadVector("a search needs exactly one of vector, text or image")
    if kinds == ["vector"]:
        return normalised(parse_vector(request["vector"], dimension, "vector"), "vector")
    if kinds == ["text"]:
        if not isinstance(request["text"], str) or not request["text"].strip():
            raise BadVector("text: expected a non-empty string")
        text_vector: np.ndarray = embedder().embed_texts([request["text"]])[0]
        return text_vector
    try:
        data = base64.b64decode(request["image"], validate=True)
    except (ValueError, TypeError):
        raise BadVector("image: expected the image file's bytes in base64") from None
    model = embedder()
    image_vector: np.ndarray = model.embed_images([model.prepare(data, max_image_pixels)])[0]
    return image_vector


def search_top(request: dict[str, Any]) -> int:
    top = request.get("top", 5)
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= 10_000:
        raise BadVector(f"top: expected an integer from 1 to 10000, got {top!r}")
    return top


def compare(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    if a.shape != b.shape:
        raise BadVector(f"the vectors have different dimensions ({len(a)} and {len(b)})")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if metric == "dot":
        return float(a64 @ b64)
    if metric == "euclidean":
        return float(np.linalg.norm(a64 - b64))
    return float(normalised(a, "A").astype(np.float64) @ normalised(b, "B").astype(np.float64))


def table(rows: list[tuple[str, float]]) -> str:
    """An ASCII table of path and similarity, as the README shows it."""
    shown = [(p.encode("unicode_escape").decode("ascii") if not p.isprintable() else p, f"{s:.4f}")
             for p, s in rows]
    width = max([len("path"), *(len(p) for p, _ in shown)])
    sim = max([len("similarity"), *(len(s) for _, s in shown)])
    rule = f"+{'-' * (width + 2)}+{'-' * (sim + 2)}+"
    lines = [rule, f"| {'path'.ljust(width)} | {'similarity'.rjust(sim)} |", rule]
    lines += [f"| {p.ljust(width)} | {s.rjust(sim)} |" for p, s in shown]
    return "\n".join([*lines, rule])


@dataclass(frozen=True)
class ImportLine:
    number: int
    path: str
    vector: np.ndarray
    model: str | None
    sha256: str | None


@dataclass(frozen=True)
class BadLine:
    number: int
    reason: str


def read_import_lines(stream: TextIO, dimension: int) -> Iterator[ImportLine | BadLine]:
    """JSON lines `{"path": ..., "embedding": [...], "model": ..., "sha256": ...}`; blank lines are skipped."""
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield BadLine(number, f"not valid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            yield BadLine(number, "expected a JSON object")
            continue
        path, model, sha = record.get("path"), record.get("model"), record.get("sha256")
        if not isinstance(path, str) or not path or "\0" in path:
            yield BadLine(number, "\"path\" must be a non-empty string")
            continue
        if model is not None and (not isinstance(model, str) or not model):
            yield BadLine(number, "\"model\" must be a non-empty string when given")
            continue
        if sha is not None and (not isinstance(sha, str) or not SHA256.match(sha)):
            yield BadLine(number, "\"sha256\" must be 64 lower-case hex digits when given")
            continue
        try:
            vector = normalised(parse_vector(record.get("embedding"), dimension, "\"embedding\""), "\"embedding\"")
        except BadVector as exc:
            yield BadLine(number, str(exc))
            continue
        yield ImportLine(number, path, vector, model, sha)
