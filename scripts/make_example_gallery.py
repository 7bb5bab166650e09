"""Generate the example gallery that ships inside the package (agent_cir/examples_data/).

48 synthetic scenes: 4 shapes x 3 colours x 2 counts x 2 backgrounds, each drawn with a seeded random
layout, plus queries.json: composed queries whose targets are known by construction. Everything is made
here from nothing (no third-party images), so the gallery is license-clean and byte-for-byte
reproducible with the same Pillow/libjpeg.

    python scripts/make_example_gallery.py            # rewrite agent_cir/examples_data/
    python scripts/make_example_gallery.py --out DIR  # somewhere else (the tests compare the two)
"""

from __future__ import annotations

import argparse
import io
import json
import math
from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {"red": (205, 40, 45), "green": (40, 155, 70), "yellow": (235, 195, 35)}
COUNTS = {"one": 1, "two": 2}
BACKGROUNDS = {"white": (244, 242, 236), "blue": (55, 100, 190)}
SIZE = (320, 240)
SCALE = 2  # drawn at twice the size, then downsampled: smooth edges without an anti-aliasing library
JPEG_QUALITY = 85

# Composed queries: reference scene + modification -> target scene (all in the gallery).
QUERIES = [
    ("two_red_circles_on_blue", "make them green", "two_green_circles_on_blue"),
    ("one_yellow_star_on_white", "add a second star", "two_yellow_stars_on_white"),
    ("one_green_square_on_white", "turn the square into a triangle", "one_green_triangle_on_white"),
    ("two_yellow_triangles_on_blue", "put them on a white background", "two_yellow_triangles_on_white"),
    ("one_red_star_on_blue", "make it green and put it on white", "one_green_star_on_white"),
    ("two_green_squares_on_white", "keep only one square and make it red", "one_red_square_on_white"),
]


def scene_name(count: str, colour: str, shape: str, background: str) -> str:
    plural = shape + "s" if count != "one" else shape
    return f"{count}_{colour}_{plural}_on_{background}"


def scene_description(count: str, colour: str, shape: str, background: str) -> str:
    article = "a" if count == "one" else count
    plural = shape + "s" if count != "one" else shape
    return f"{article} {colour} {plural} on a {background} background"


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [turn + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if shape == "triangle":
        corners = [turn - math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    # five-pointed star: outer and inner radius alternate
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.42
        angle = turn - math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def draw_scene(count: int, colour: tuple[int, int, int], shape: str, background: tuple[int, int, int],
               seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = SIZE[0] * SCALE, SIZE[1] * SCALE
    # background: a gentle vertical shade and fine noise, so that scenes are not flat colour fields
    shade = np.linspace(-14, 14, height)[:, None, None]
    noise = rng.normal(0, 5, (height, width, 1))
    pixels = np.clip(np.array(background, dtype=np.float64)[None, None, :] + shade + noise, 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    # one or two objects, in separate halves when two, each with its own size, jitter and rotation
    slots = [(0.5, 0.5)] if count == 1 else [(0.28, 0.5), (0.72, 0.5)]
    for sx, sy in slots:
        r = (0.17 if count == 1 else 0.13) * width * rng.uniform(0.85, 1.1)
        cx = sx * width + rng.uniform(-0.04, 0.04) * width
        cy = sy * height + rng.uniform(-0.12, 0.12) * height
        tint = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in colour)
        outline = tuple(max(0, c - 60) for c in tint)
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tint, outline=outline, width=3 * SCALE)
        else:
            turn = float(rng.uniform(-0.25, 0.25))
            draw.polygon(_polygon(shape, cx, cy, r, turn), fill=tint, outline=outline, width=3 * SCALE)
    return image.resize(SIZE, Image.Resampling.LANCZOS)


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def build(out: Path) -> dict[str, object]:
    gallery = out / "gallery"
    gallery.mkdir(parents=True, exist_ok=True)
    scenes = []
    for seed, (shape, colour, count, background) in enumerate(product(SHAPES, COLOURS, COUNTS, BACKGROUNDS)):
        name = scene_name(count, colour, shape, background)
        image = draw_scene(COUNTS[count], COLOURS[colour], shape, BACKGROUNDS[background], seed)
        (gallery / f"{name}.jpg").write_bytes(jpeg_bytes(image))
        scenes.append({"file": f"{name}.jpg", "shape": shape, "colour": colour, "count": COUNTS[count],
                       "background": background,
                       "description": scene_description(count, colour, shape, background)})
    by_name = {scene["file"][:-4]: scene for scene in scenes}
    queries = []
    for number, (reference, modification, target) in enumerate(QUERIES, start=1):
        queries.append({
            "id": f"example-{number}",
            "reference": f"{reference}.jpg",
            "text": modification,
            "target": f"{target}.jpg",
            "reference_description": by_name[reference]["description"],
            "target_description": by_name[target]["description"],
        })
    manifest = {
        "about": "Synthetic scenes generated by scripts/make_example_gallery.py; no third-party content. "
                 "Descriptions are known by construction; the offline quickstart's scripted models read them.",
        "license": "Apache-2.0 (same as agent_cir)",
        "scenes": scenes,
        "queries": queries,
    }
    (out / "examples.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent.parent / "agent_cir" / "examples_data"
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args()
    manifest = build(args.out)
    sizes = [p.stat().st_size for p in (args.out / "gallery").glob("*.jpg")]
    print(f"{len(sizes)} images, {min(sizes) // 1024}-{max(sizes) // 1024} KiB each, "
          f"{sum(sizes) // 1024} KiB in all; {len(manifest['queries'])} queries -> {args.out}")


if __name__ == "__main__":
    main()
