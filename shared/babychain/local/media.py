"""Real, deterministic media for the built-in offline "local provider".

Nothing here calls a model: images are rendered from a hash of (prompt, seed) and videos are a Ken Burns
move over the input picture. The point is that every step of a chain produces a genuine PNG/JPEG/WebP/MP4 that
downstream steps, storage and browsers can decode, so the whole engine can be exercised on one machine.

Only Pillow and PyAV are used (no numpy). Images are byte-identical for identical inputs; videos are
deterministic in practice (x264 with fixed settings) but callers should not rely on byte equality there.

All public functions raise `ValueError` for bad input (undecodable image, unknown format, bad ratio); the
provider adapter maps that to its own error type.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
import warnings
from collections.abc import Callable, Iterator
from fractions import Fraction
from functools import lru_cache

import av
from PIL import (
    Image,
    ImageChops,
    ImageDraw,
    ImageFilter,
    ImageFont,
    ImageOps,
    ImageStat,
    UnidentifiedImageError,
)

from babychain.media_types import content_type_for, extension_for, normalize_format

__all__ = [
    "content_type_for",
    "extension_for",
    "image_to_image",
    "image_to_video",
    "text_to_image",
]

MIN_SIDE = 64
MAX_SIDE = 2048
MIN_VIDEO_SECONDS = 1.0
MAX_VIDEO_SECONDS = 12.0
MAX_FPS = 60
# Inputs above this many pixels are refused outright instead of being decoded (decompression-bomb guard).
MAX_INPUT_PIXELS = 64_000_000

_IMAGE_FORMATS = ("png", "jpeg", "webp")
_KEEP_RATIO = {"", "adaptive", "keep_ratio", "keep", "original", "auto"}

RGB = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


# --------------------------------------------------------------------------------------------- formats


def _normalize_image_format(output_format: str) -> str:
    fmt = normalize_format(output_format)
    if fmt not in _IMAGE_FORMATS:
        raise ValueError(f"unsupported image output format {output_format!r}; expected png, jpeg, jpg or webp")
    return fmt


# --------------------------------------------------------------------------------------------- helpers


def _rng(*parts: object) -> random.Random:
    """A PRNG seeded from a stable hash of `parts` (never Python's randomized `hash`)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
    return random.Random(int.from_bytes(digest.digest(), "big"))


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _clamp_side(value: object, default: int) -> int:
    try:
        side = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        side = default
    return _clamp(side, MIN_SIDE, MAX_SIDE)


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, max(0.0, min(1.0, s)), max(0.0, min(1.0, v)))
    return (round(r * 255), round(g * 255), round(b * 255))


def _palette(rng: random.Random, count: int = 5) -> list[RGB]:
    """A harmonious palette: analogous, complementary or triadic around a random base hue."""
    base = rng.random()
    scheme = rng.choice(((0.0, 0.08, -0.08, 0.16), (0.0, 0.5, 0.08, 0.58), (0.0, 1 / 3, 2 / 3, 0.1)))
    colours = []
    for i in range(count):
        hue = base + scheme[i % len(scheme)] + rng.uniform(-0.03, 0.03)
        colours.append(_hsv(hue, rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.98)))
    return colours


def _lerp(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _clean_text(text: str) -> str:
    """Collapse whitespace and drop characters no font can draw (controls, lone surrogates).

    Only the first 2000 characters are kept: no caption shows more, and wrapping cost stays bounded.
    """
    cleaned = "".join(ch if ch.isprintable() else " " for ch in str(text)[:2000])
    return " ".join(cleaned.split())


@lru_cache(maxsize=32)
def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()


def _drawable(text: str, font: Font) -> str:
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    # The legacy bitmap font only knows Latin-1.
    return text.encode("latin-1", "replace").decode("latin-1")


def _fitting_prefix(word: str, width: Callable[[str], float], max_width: float) -> int:
    """Length of the longest prefix of `word` that fits (at least one character), by binary search."""
    lo, hi = 1, len(word) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if width(word[:mid]) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Font, max_width: float, max_lines: int) -> list[str]:
    """Greedy pixel-width word wrap; over-long words are split; overflow ends with '...'.

    Stops as soon as `max_lines` is exceeded, so very long prompts cost no more than short ones.
    """

    def width(s: str) -> float:
        return draw.textlength(s, font=font)

    def pieces() -> Iterator[str]:
        for word in text.split():
            while len(word) > 1 and width(word) > max_width:
                cut = _fitting_prefix(word, width, max_width)
                yield word[:cut]
                word = word[cut:]
            yield word

    lines: list[str] = []
    current = ""
    for piece in pieces():
        candidate = f"{current} {piece}" if current else piece
        if not current or width(candidate) <= max_width:
            current = candidate
            continue
        lines.append(current)
        current = piece
        if len(lines) > max_lines:
            break
    if current and len(lines) <= max_lines:
        lines.append(current)

    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and width(last + "...") > max_width:
            last = last[:-1].rstrip()
        lines[-1] = last + "..."
    return lines


def _text_block(
    size: tuple[int, int],
    text: str,
    *,
    font_size: int,
    max_lines: int,
    anchor_y: float,
    panel_alpha: int = 120,
) -> Image.Image:
    """A transparent RGBA layer with `text` wrapped and centred on a translucent rounded panel.

    `anchor_y` is the vertical centre of the block as a fraction of the height.
    """
    width, height = size
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    text = _clean_text(text)
    if not text:
        return layer
    font = _font(font_size)
    text = _drawable(text, font)
    draw = ImageDraw.Draw(layer)
    margin = max(6, width // 16)
    lines = _wrap(draw, text, font, width - 2 * margin - 2 * (font_size // 2), max_lines)
    if not lines:
        return layer
    line_height = round(font_size * 1.25)
    block_h = line_height * len(lines)
    block_w = max(draw.textlength(line, font=font) for line in lines)
    pad = max(4, font_size // 2)
    centre_y = round(height * anchor_y)
    top = _clamp(centre_y - block_h // 2, pad, max(pad, height - block_h - pad))
    left = (width - block_w) / 2
    draw.rounded_rectangle(
        (left - pad, top - pad, left + block_w + pad, top + block_h + pad),
        radius=pad,
        fill=(12, 12, 16, panel_alpha),
    )
    stroke = max(1, font_size // 18) if isinstance(font, ImageFont.FreeTypeFont) else 0
    for i, line in enumerate(lines):
        line_w = draw.textlength(line, font=font)
        draw.text(
            ((width - line_w) / 2, top + i * line_height + (line_height - font_size) / 2),
            line,
            font=font,
            fill=(255, 255, 255, 240),
            stroke_width=stroke,
            stroke_fill=(0, 0, 0, 150),
        )
    return layer


def _encode_image(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    rgb = img.convert("RGB")
    if fmt == "png":
        rgb.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpeg":
        rgb.save(buf, format="JPEG", quality=90)
    else:
        rgb.save(buf, format="WEBP", quality=90, method=4)
    return buf.getvalue()


def _decode_image(data: bytes, *, draft_side: int | None = None) -> Image.Image:
    """Decode any Pillow-readable image to RGB (EXIF-rotated, alpha flattened onto neutral grey)."""
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
        raise ValueError("input image is empty or not bytes")
    img: Image.Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)))
            if img.width * img.height > MAX_INPUT_PIXELS:
                raise ValueError(
                    f"input image is too large ({img.width}x{img.height}); limit is {MAX_INPUT_PIXELS} pixels"
                )
            if draft_side is not None and img.format == "JPEG":
                img.draft("RGB", (draft_side, draft_side))
            img.load()
            img = ImageOps.exif_transpose(img)
    except ValueError:
        raise
    except UnidentifiedImageError as exc:
        raise ValueError("input image could not be decoded: not a recognised image format") from exc
    except Exception as exc:  # OSError (truncated/corrupt), SyntaxError, DecompressionBombError, ...
        raise ValueError(f"input image could not be decoded: {exc}") from exc
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        img = img.point(lambda v: v / 256).convert("L") if img.mode != "F" else img.convert("L")
    return img.convert("RGB")


def _fit_within(width: int, height: int, limit: int) -> tuple[int, int]:
    scale = min(1.0, limit / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


# ---------------------------------------------------------------------------------------- text → image


def _background(rng: random.Random, palette: list[RGB], size: tuple[int, int]) -> Image.Image:
    """A smooth three-stop gradient with soft blurred shapes, rendered small and upscaled (cheap, smooth)."""
    width, height = size
    work_w, work_h = _fit_within(width, height, 320)
    grad_w, grad_h = max(2, round(work_w / 8)), max(2, round(work_h / 8))
    angle = rng.uniform(0.0, 2 * math.pi)
    dx, dy = math.cos(angle), math.sin(angle)
    stops = [palette[0], palette[1], palette[2]]
    pixels: list[RGB] = []
    for y in range(grad_h):
        for x in range(grad_w):
            t = ((x / (grad_w - 1) - 0.5) * dx + (y / (grad_h - 1) - 0.5) * dy) / 1.4142 + 0.5
            t = max(0.0, min(1.0, t))
            pixels.append(_lerp(stops[0], stops[1], t * 2) if t < 0.5 else _lerp(stops[1], stops[2], t * 2 - 1))
    gradient = Image.new("RGB", (grad_w, grad_h))
    gradient.putdata(pixels)
    base = gradient.resize((work_w, work_h), Image.Resampling.BICUBIC).convert("RGBA")

    shapes = Image.new("RGBA", (work_w, work_h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(shapes)
    short = min(work_w, work_h)
    for _ in range(rng.randint(5, 9)):
        colour = rng.choice(palette[1:])
        colour = _lerp(colour, (255, 255, 255), rng.uniform(0.0, 0.35))
        cx, cy = rng.uniform(0, work_w), rng.uniform(0, work_h)
        rx = short * rng.uniform(0.08, 0.32)
        ry = rx * rng.uniform(0.6, 1.4)
        alpha = rng.randint(120, 220)
        if rng.random() < 0.25:
            draw.ellipse(
                (cx - rx, cy - ry, cx + rx, cy + ry),
                outline=(*colour, alpha),
                width=max(2, round(short * 0.025)),
            )
        else:
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=(*colour, alpha))
    shapes = shapes.filter(ImageFilter.GaussianBlur(radius=max(2.0, short * 0.05)))
    base = Image.alpha_composite(base, shapes)
    return base.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


def text_to_image(
    prompt: str,
    *,
    seed: int | None,
    width: int = 1024,
    height: int = 1024,
    output_format: str = "png",
) -> bytes:
    """Render a deterministic abstract image for `prompt` (palette and layout hashed from prompt and seed).

    Width and height are clamped to 64..2048. Same inputs give byte-identical output.
    """
    fmt = _normalize_image_format(output_format)
    seed = 0 if seed is None else int(seed)
    width, height = _clamp_side(width, 1024), _clamp_side(height, 1024)
    rng = _rng("text_to_image", prompt, seed)
    palette = _palette(rng)
    img = _background(rng, palette, (width, height)).convert("RGBA")

    font_size = max(10, round(min(width, height) / 16))
    caption = _text_block(
        (width, height),
        prompt,
        font_size=font_size,
        max_lines=max(1, min(6, round(height / (font_size * 1.25) / 2.5))),
        anchor_y=rng.choice((0.3, 0.5, 0.7)),
    )
    img = Image.alpha_composite(img, caption)

    label_size = max(8, font_size // 3)
    label_font = _font(label_size)
    label = ImageDraw.Draw(img)
    label.text(
        (max(4, width // 64), height - label_size - max(4, height // 64)),
        _drawable(f"babychain local · seed {seed}", label_font),
        font=label_font,
        fill=(255, 255, 255, 170),
    )
    return _encode_image(img, fmt)


# --------------------------------------------------------------------------------------- image → image


def _swirl(img: Image.Image, strength: float, grid: int = 24) -> Image.Image:
    """Twist the picture around its centre with a mesh transform (rotation fades out towards the edge)."""
    width, height = img.size
    cx, cy = width / 2, height / 2
    radius = min(width, height) / 2

    def source(x: float, y: float) -> tuple[float, float]:
        ox, oy = x - cx, y - cy
        r = math.hypot(ox, oy)
        if r >= radius:
            return x, y
        theta = strength * (1 - r / radius) ** 2
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        return cx + ox * cos_t - oy * sin_t, cy + ox * sin_t + oy * cos_t

    mesh = []
    xs = [round(i * width / grid) for i in range(grid + 1)]
    ys = [round(j * height / grid) for j in range(grid + 1)]
    for j in range(grid):
        for i in range(grid):
            x0, x1, y0, y1 = xs[i], xs[i + 1], ys[j], ys[j + 1]
            if x1 <= x0 or y1 <= y0:
                continue
            quad = (*source(x0, y0), *source(x0, y1), *source(x1, y1), *source(x1, y0))
            mesh.append(((x0, y0, x1, y1), quad))
    return img.transform(img.size, Image.Transform.MESH, mesh, resample=Image.Resampling.BICUBIC)


def _mirror(img: Image.Image, vertical: bool) -> Image.Image:
    width, height = img.size
    out = img.copy()
    if vertical:
        half = img.crop((0, 0, width, height // 2))
        out.paste(ImageOps.flip(half), (0, height - half.height))
    else:
        half = img.crop((0, 0, width // 2, height))
        out.paste(ImageOps.mirror(half), (width - half.width, 0))
    return out


def _kaleidoscope(img: Image.Image) -> Image.Image:
    width, height = img.size
    quarter = img.crop((0, 0, (width + 1) // 2, (height + 1) // 2))
    out = img.copy()
    out.paste(quarter, (0, 0))
    out.paste(ImageOps.mirror(quarter), (width - quarter.width, 0))
    out.paste(ImageOps.flip(quarter), (0, height - quarter.height))
    out.paste(ImageOps.flip(ImageOps.mirror(quarter)), (width - quarter.width, height - quarter.height))
    return out


def _tile(img: Image.Image) -> Image.Image:
    width, height = img.size
    half_w, half_h = max(1, (width + 1) // 2), max(1, (height + 1) // 2)
    small = img.resize((half_w, half_h), Image.Resampling.LANCZOS)
    out = Image.new("RGB", img.size)
    out.paste(small, (0, 0))
    out.paste(ImageOps.mirror(small), (width - half_w, 0))
    out.paste(ImageOps.flip(small), (0, height - half_h))
    out.paste(ImageOps.flip(ImageOps.mirror(small)), (width - half_w, height - half_h))
    return out


def _vignette(img: Image.Image, colour: RGB, strength: float) -> Image.Image:
    # radial_gradient is 0 at the centre and 255 at the edge of a 256x256 square.
    mask = Image.radial_gradient("L").resize(img.size, Image.Resampling.BILINEAR)
    mask = mask.point(lambda v: round(min(255, v * v / 255) * strength))
    return Image.composite(Image.new("RGB", img.size, colour), img, mask)


def _mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    small = (max(1, min(a.width, 256)), max(1, min(a.height, 256)))
    diff = ImageChops.difference(a.resize(small, Image.Resampling.BILINEAR), b.resize(small, Image.Resampling.BILINEAR))
    return sum(ImageStat.Stat(diff).mean) / 3


def _output_size(src: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    src_w, src_h = src
    if width is None and height is None:
        w, h = _fit_within(src_w, src_h, MAX_SIDE)
        return max(MIN_SIDE, w), max(MIN_SIDE, h)
    if width is not None and height is not None:
        return _clamp_side(width, src_w), _clamp_side(height, src_h)
    if width is not None:
        w = _clamp_side(width, src_w)
        return w, _clamp(round(src_h * w / src_w), MIN_SIDE, MAX_SIDE)
    h = _clamp_side(height, src_h)
    return _clamp(round(src_w * h / src_h), MIN_SIDE, MAX_SIDE), h


def image_to_image(
    image: bytes,
    prompt: str,
    *,
    seed: int | None,
    output_format: str = "png",
    width: int | None = None,
    height: int | None = None,
) -> bytes:
    """Restyle `image` deterministically: colour grade, a geometric effect, a vignette and a prompt caption.

    The output keeps the input's size (fitted into 2048 px, at least 64 px a side) unless width and/or height
    are given (one alone keeps the aspect ratio); both are clamped to 64..2048.
    """
    fmt = _normalize_image_format(output_format)
    seed = 0 if seed is None else int(seed)
    src = _decode_image(image)
    size = _output_size(src.size, width, height)
    if src.size != size:
        src = src.resize(size, Image.Resampling.LANCZOS)
    rng = _rng("image_to_image", prompt, seed)
    palette = _palette(rng)

    # 1. Colour grade: a palette duotone blended over the original, sometimes posterized.
    dark = _lerp(palette[0], (0, 0, 0), 0.7)
    light = _lerp(palette[3], (255, 255, 255), 0.45)
    duotone = ImageOps.colorize(ImageOps.autocontrast(src.convert("L")), black=dark, white=light, mid=palette[1])
    img = Image.blend(src, duotone, rng.uniform(0.55, 0.8))
    if rng.random() < 0.5:
        img = ImageOps.posterize(img, rng.choice((2, 3)))

    # 2. Geometry.
    effect = rng.choice(("swirl", "mirror", "kaleidoscope", "tile"))
    if effect == "swirl":
        img = _swirl(img, rng.choice((-1, 1)) * rng.uniform(1.8, 3.2))
    elif effect == "mirror":
        img = _mirror(img, vertical=rng.random() < 0.5)
    elif effect == "kaleidoscope":
        img = _kaleidoscope(img)
    else:
        img = _tile(img)

    # 3. Vignette in the palette's darkest tone.
    img = _vignette(img, dark, rng.uniform(0.5, 0.8))

    # Guarantee a clearly visible change even for flat inputs the grade happens to preserve.
    if _mean_abs_diff(src, img) < 30:
        mean = ImageStat.Stat(img).mean
        far: RGB = (0 if mean[0] > 127 else 255, 0 if mean[1] > 127 else 255, 0 if mean[2] > 127 else 255)
        img = Image.blend(img, Image.new("RGB", img.size, far), 0.5)

    # 4. Caption band with the prompt.
    font_size = max(10, round(min(size) / 20))
    caption = _text_block(size, prompt, font_size=font_size, max_lines=2, anchor_y=0.88, panel_alpha=150)
    img = Image.alpha_composite(img.convert("RGBA"), caption)
    return _encode_image(img, fmt)


# --------------------------------------------------------------------------------------- image → video


def _parse_ratio(ratio: str | None) -> float | None:
    if ratio is None or str(ratio).strip().lower() in _KEEP_RATIO:
        return None
    text = str(ratio).strip().lower().replace("/", ":").replace("x", ":")
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        num, den = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"unsupported ratio {ratio!r}; expected e.g. '16:9', '1:1' or 'adaptive'") from None
    if not (math.isfinite(num) and math.isfinite(den)) or num <= 0 or den <= 0 or not 0.2 <= num / den <= 5:
        raise ValueError(f"unsupported ratio {ratio!r}; width:height must lie between 1:5 and 5:1")
    return num / den


def _crop_to_ratio(img: Image.Image, aspect: float) -> Image.Image:
    width, height = img.size
    if width / height > aspect:
        new_w = max(1, round(height * aspect))
        left = (width - new_w) // 2
        return img.crop((left, 0, left + new_w, height))
    new_h = max(1, round(width / aspect))
    top = (height - new_h) // 2
    return img.crop((0, top, width, top + new_h))


def _even_size(width: int, height: int, limit: int) -> tuple[int, int]:
    """Fit into `limit` on the longer side (upscaling tiny inputs to 64), with even dimensions for yuv420p."""
    longest = max(width, height)
    scale = limit / longest if longest > limit else (MIN_SIDE / longest if longest < MIN_SIDE else 1.0)
    w = max(16, int(width * scale) // 2 * 2)
    h = max(16, int(height * scale) // 2 * 2)
    return w, h


def _ease(t: float) -> float:
    return t * t * (3 - 2 * t)


def image_to_video(
    image: bytes,
    prompt: str,
    *,
    seed: int | None,
    duration_seconds: float = 3.0,
    fps: int = 12,
    ratio: str | None = None,
    max_side: int = 512,
) -> bytes:
    """Encode an H.264/yuv420p MP4 of a Ken Burns zoom/pan over `image` with a drifting highlight and caption.

    `duration_seconds` is clamped to 1..12, `fps` to 1..60 and `max_side` to 64..2048; the frame count is
    round(duration * fps). `ratio` ("16:9", "1:1", ...) centre-crops; None/"adaptive"/"keep_ratio" keeps the
    input's aspect.
    """
    seed = 0 if seed is None else int(seed)
    try:
        duration = float(duration_seconds)
    except (TypeError, ValueError):
        duration = 3.0
    if not math.isfinite(duration):
        duration = 3.0
    duration = max(MIN_VIDEO_SECONDS, min(MAX_VIDEO_SECONDS, duration))
    fps = _clamp(int(fps), 1, MAX_FPS)
    limit = _clamp_side(max_side, 512)
    aspect = _parse_ratio(ratio)

    src = _decode_image(image, draft_side=limit * 2)
    if aspect is not None:
        src = _crop_to_ratio(src, aspect)
    out_w, out_h = _even_size(src.width, src.height, limit)
    # Keep a little more resolution than the output so the zoomed-in end of the move stays sharp.
    src_w, src_h = _fit_within(src.width, src.height, round(max(out_w, out_h) * 1.25))
    if (src_w, src_h) != src.size:
        src = src.resize((src_w, src_h), Image.Resampling.LANCZOS)

    rng = _rng("image_to_video", prompt, seed)
    palette = _palette(rng)
    zoom_a, zoom_b = 1.0, rng.uniform(1.15, 1.3)
    if rng.random() < 0.5:
        zoom_a, zoom_b = zoom_b, zoom_a
    pan_a = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
    pan_b = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))

    # A soft round glow that drifts across the frame. radial_gradient is 0 at the centre and ~181 at the
    # middle of each edge (255 only in the corners), so fade to exactly 0 by radius 128 to avoid a square rim.
    glow_d = max(8, round(min(out_w, out_h) * 0.9))
    glow = Image.radial_gradient("L").point(lambda v: round(max(0.0, 1 - v / 181) ** 2 * 150))
    glow = glow.resize((glow_d, glow_d), Image.Resampling.BILINEAR)
    glow_tint = Image.new("RGB", (out_w, out_h), _lerp(palette[3], (255, 255, 255), 0.6))
    glow_from_left = rng.random() < 0.5

    caption = _text_block(
        (out_w, out_h),
        prompt,
        font_size=max(10, round(min(out_w, out_h) / 18)),
        max_lines=2,
        anchor_y=0.88,
        panel_alpha=140,
    )
    caption_rgb = caption.convert("RGB")
    caption_mask = caption.getchannel("A")

    frame_count = max(1, round(duration * fps))
    buf = io.BytesIO()
    container = av.open(buf, mode="w", format="mp4")
    try:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = out_w
        stream.height = out_h
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(frame_count):
            t = _ease(i / (frame_count - 1)) if frame_count > 1 else 0.0
            zoom = zoom_a + (zoom_b - zoom_a) * t
            view_w, view_h = src_w / zoom, src_h / zoom
            fx = pan_a[0] + (pan_b[0] - pan_a[0]) * t
            fy = pan_a[1] + (pan_b[1] - pan_a[1]) * t
            left = (src_w - view_w) * fx
            top = (src_h - view_h) * fy
            frame_img = src.transform(
                (out_w, out_h),
                Image.Transform.EXTENT,
                (left, top, left + view_w, top + view_h),
                resample=Image.Resampling.BILINEAR,
            )

            linear = i / (frame_count - 1) if frame_count > 1 else 0.5
            gx_frac = linear if glow_from_left else 1 - linear
            gx = round(-glow_d / 2 + gx_frac * out_w)
            gy = round(out_h * (0.4 + 0.15 * math.sin(linear * 2 * math.pi)) - glow_d / 2)
            mask = Image.new("L", (out_w, out_h), 0)
            mask.paste(glow, (gx, gy))
            frame_img = Image.composite(glow_tint, frame_img, mask)
            frame_img.paste(caption_rgb, (0, 0), caption_mask)

            frame = av.VideoFrame.from_image(frame_img)
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()
    return buf.getvalue()
