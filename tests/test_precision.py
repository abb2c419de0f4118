"""model.precision: chosen by measurement on this machine, checked against fp32, cached; bf16 vectors agree
with fp32 on the test images. The tiny random CLIP of the other tests, on whatever CPU runs them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from clipwatch import ovmodel, precision
from clipwatch.embedder import Embedder
from conftest import write_image


@pytest.fixture(autouse=True)
def without_openvino(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """openvino-int8 is converted (seconds) wherever `auto` may take it: only its own tests (named
    *openvino*) offer it; the others choose among torch's precisions, as without the extra."""
    if "openvino" not in request.node.name:
        monkeypatch.setattr(ovmodel, "available", lambda: "left out of this test")


def load(model_dir: Path, setting: str, cache: Path | None = None) -> Embedder:
    e = Embedder(str(model_dir), device="cpu", precision=setting, choice_cache=str(cache) if cache else "")
    e.load()
    return e


def test_bf16_vectors_agree_with_fp32_on_images_and_texts_follow_only_if_they_agree(model_dir: Path, tmp_path: Path):
    fp32, bf16 = load(model_dir, "fp32"), load(model_dir, "bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    files = [write_image(tmp_path / f"{i}.jpg", seed=i, size=(320, 240)) for i in range(6)]
    pixels = [fp32.prepare(f.read_bytes(), 10**8) for f in files]
    a, b = fp32.embed_images(pixels), bf16.embed_images(pixels)
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.999
    assert not np.array_equal(a, b)  # it did run in bf16
    # Texts run in bf16 only where a probe text agrees as closely; the tiny random text tower may not.
    ta, tb = fp32.embed_texts(["a red bicycle", "a cat"]), bf16.embed_texts(["a red bicycle", "a cat"])
    assert bf16.text_precision in ("bf16", "fp32") and float(np.min(np.sum(ta * tb, axis=1))) >= (
        0.999 if bf16.text_precision == "bf16" else 1 - 1e-6)


def test_auto_measures_picks_the_fastest_agreeing_precision_and_caches_it(model_dir: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]):
    cache = tmp_path / "precision.json"
    first = load(model_dir, "auto", cache)
    assert first.precision in precision.supported("cpu")
    (key, chosen), = json.loads(cache.read_text()).items()
    assert chosen == first.precision and "|" in key
    started = time.perf_counter()
    again = load(model_dir, "auto", cache)
    assert again.precision == first.precision
    assert time.perf_counter() - started < 30  # the model load itself; the choice comes from the cache
    out = capsys.readouterr().out
    assert out.count("model_precision_chosen") == 2 and "cached" in out


def test_auto_keeps_fp32_when_the_others_measure_slower(model_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    # Stands in for a CPU without bf16 units (AVX2 only), which this machine may not be: bf16 (and int8)
    # are made to cost a second per call, as bf16 costs there relative to fp32.
    real = Embedder._forward_pixels

    def slow_bf16(self: Embedder, batch: np.ndarray, wanted: str | None = None) -> np.ndarray:
        if (wanted or self.precision) != "fp32":
            time.sleep(1.0)
        return real(self, batch, wanted)

    monkeypatch.setattr(Embedder, "_forward_pixels", slow_bf16)
    started = time.perf_counter()
    e = load(model_dir, "auto", tmp_path / "precision.json")
    assert e.precision == "fp32"
    assert time.perf_counter() - started < 30


def test_a_precision_whose_vectors_disagree_is_not_used(model_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    real = Embedder._forward_pixels

    def wrong_but_in_fp32(self: Embedder, batch: np.ndarray, wanted: str | None = None) -> np.ndarray:
        # every reduced precision disagrees: else int8, if it measures faster here, is rightly chosen
        out = real(self, batch, wanted)
        return np.roll(out, 1, axis=1) if (wanted or self.precision) != "fp32" else out

    monkeypatch.setattr(Embedder, "_forward_pixels", wrong_but_in_fp32)
    assert load(model_dir, "auto").precision == "fp32"
    assert load(model_dir, "bf16").precision == "fp32"  # asked for explicitly: checked the same way


def test_the_machine_key_names_the_cpu_flags_torch_and_model():
    key = precision.machine_key("clip-ViT-B-32", "cpu", 2)
    import torch

    assert torch.__version__ in key and key.endswith("|clip-ViT-B-32|cpu||2")
    quantized = {"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines)
    assert precision.supported("cpu") == ["fp32", "bf16", *(["int8"] if quantized else [])]  # openvino: left out


def test_texts_stay_in_fp32_when_a_probe_text_disagrees_in_bf16(model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    real = Embedder._encode

    def wrong_texts(self: Embedder, texts, wanted):  # type: ignore[no-untyped-def]
        out = real(self, texts, wanted)
        return np.roll(out, 1, axis=1) if wanted == "bf16" else out

    monkeypatch.setattr(Embedder, "_encode", wrong_texts)
    e = load(model_dir, "bf16")
    assert (e.precision, e.text_precision) == ("bf16", "fp32")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_running_precision_is_exported(make_harness):  # type: ignore[no-untyped-def]
    h = make_harness()
    values = {p: h.metrics.registry.get_sample_value("clipwatch_model_precision", {"precision": p})
              for p in ("fp32", "bf16", "int8", "fp16", "openvino-int8")}
    assert values == {"fp32": 1.0, "bf16": 0.0, "int8": 0.0, "fp16": 0.0, "openvino-int8": 0.0}


def test_int8_converts_the_vision_tower_only_and_the_chosen_copy_replaces_the_fp32_model(model_dir: Path):
    fp32, int8 = load(model_dir, "fp32"), load(model_dir, "int8")
    assert (int8.precision, int8.text_precision) == ("int8", "fp32")  # the text tower stays fp32
    assert not int8._variants  # one model in memory once chosen: the probe's copies are dropped
    kinds = {type(m).__module__ for m in int8._model.modules() if type(m).__name__ == "Linear"}
    assert kinds == {"torch.nn.modules.linear", "torch.ao.nn.quantized.dynamic.modules.linear"}  # texts: fp32
    texts = ["a red bicycle", "a cat"]
    assert np.allclose(fp32.embed_texts(texts), int8.embed_texts(texts), atol=1e-6)


def test_a_precision_the_probe_finds_fastest_is_chosen_whatever_its_kind(model_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    # Stands in for a CPU where int8 wins (VNNI, as on this project's AVX-512 machine) and for one where
    # bf16 wins (AMX): the others are made to cost a second per call.
    real = Embedder._forward_pixels
    for fastest in ("int8", "bf16"):
        def slow_others(self: Embedder, batch: np.ndarray, wanted: str | None = None,
                        fastest: str = fastest) -> np.ndarray:
            if (wanted or self.precision) != fastest:
                time.sleep(0.5)
            return real(self, batch, wanted)

        monkeypatch.setattr(Embedder, "_forward_pixels", slow_others)
        assert load(model_dir, "auto", tmp_path / f"{fastest}.json").precision == fastest


# --- openvino-int8 (ovmodel.py) -------------------------------------------------------------------------------
# The tiny random CLIP is not CLIP: its int8 vectors disagree with fp32 (cosine ~0.87 on the shipped photos),
# so it shows the refusal as it is; the tests of the choice by speed lower the agreement threshold for it,
# and say so.

def events(out: str, name: str) -> list[str]:
    return [line for line in out.splitlines() if name in line]


def test_openvino_int8_is_converted_once_and_refused_where_it_disagrees_on_real_photos(
        model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert not ovmodel.available(), "the openvino extra is installed by scripts/bootstrap"
    e = load(model_dir, "openvino-int8", tmp_path / "precision.json")
    assert e.precision == "fp32" and e._tower is None
    out = capsys.readouterr().out
    refused = events(out, "model_precision_unavailable")
    assert refused and "disagree with fp32 on real photos" in refused[0], out
    assert len(events(out, "openvino_converted")) == 1
    assert list((tmp_path / "openvino").glob("*/vision-int8.xml")), "the conversion is kept"
    assert load(model_dir, "openvino-int8", tmp_path / "precision.json").precision == "fp32"
    out = capsys.readouterr().out
    assert events(out, "openvino_converted") == [], "a later start does not convert again"
    assert "checked at its conversion" in "".join(events(out, "model_precision_unavailable")), out


def test_without_openvino_auto_chooses_among_torchs_precisions_and_says_why(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(ovmodel, "available", lambda: "openvino is not installed (pip install clipwatch[openvino])")
    e = load(model_dir, "auto", tmp_path / "precision.json")
    assert e.precision in ("fp32", "bf16", "int8")
    assert "openvino is not installed" in "".join(events(capsys.readouterr().out, "model_precision_unavailable"))
    assert load(model_dir, "openvino-int8").precision == "fp32"


@pytest.fixture
def agreeing_tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny random model's int8 error says nothing about CLIP's (0.996 measured on ViT-B/32): accept it."""
    monkeypatch.setattr(ovmodel, "AGREEMENT_MIN", 0.5)
    monkeypatch.setitem(precision.AGREEMENT_MIN, "openvino-int8", 0.5)


def slowed(monkeypatch: pytest.MonkeyPatch, fast: str) -> None:
    """Every precision but `fast` costs half a second more per call (a CPU where `fast` wins)."""
    real = Embedder._forward_pixels

    def slow_others(self: Embedder, batch: np.ndarray, wanted: str | None = None) -> np.ndarray:
        if (wanted or self.precision) != fast:
            time.sleep(0.5)
        return real(self, batch, wanted)

    monkeypatch.setattr(Embedder, "_forward_pixels", slow_others)


@pytest.mark.usefixtures("agreeing_tiny_model")
def test_auto_takes_openvino_int8_where_it_measures_fastest_and_a_later_start_loads_it(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    slowed(monkeypatch, "openvino-int8")
    cache = tmp_path / "precision.json"
    e = load(model_dir, "auto", cache)
    assert e.precision == "openvino-int8" and e.text_precision == "fp32"
    pixels = np.stack([e.preprocessing.pixels(img) for img in ovmodel.photos("agreement")])  # type: ignore[union-attr]
    assert np.array_equal(e.embed_images(list(pixels)), e._tower(pixels)), "images go through the int8 tower"
    capsys.readouterr()
    again = load(model_dir, "auto", cache)
    out = capsys.readouterr().out
    assert again.precision == "openvino-int8" and again._tower is not None
    assert events(out, "openvino_converted") == [] and again.choice["figures"] == {"cached": True}


@pytest.mark.usefixtures("agreeing_tiny_model")
def test_auto_keeps_todays_choice_where_openvino_measures_slower(model_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    slowed(monkeypatch, "fp32")
    e = load(model_dir, "auto", tmp_path / "precision.json")
    assert e.precision == "fp32" and e._tower is None
