"""The local provider's media generator produces real, decodable, deterministic media."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from babychain.local.media import (
    content_type_for,
    extension_for,
    image_to_image,
    image_to_video,
    text_to_image,
)


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    return sum(ImageStat.Stat(diff).mean) / 3


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A textured 320x240 input independent of the module under test."""
    img = Image.new("RGB", (320, 240))
    img.paste(Image.linear_gradient("L").resize((320, 240)).convert("RGB"))
    draw = ImageDraw.Draw(img)
    for i in range(8):
        draw.rectangle((i * 40, 20 + i * 10, i * 40 + 30, 120 + i * 10), fill=(255 - i * 30, 40 * i % 256, 90))
    draw.ellipse((200, 140, 300, 230), fill=(20, 200, 240))
    return _encode(img)


# ------------------------------------------------------------------------------------------ text_to_image


def test_text_to_image_png_has_requested_size_and_real_content() -> None:
    data = text_to_image("a lighthouse in a storm", seed=7, width=320, height=200)
    img = _decode(data)
    assert img.format == "PNG"
    assert img.size == (320, 200)
    stddev = ImageStat.Stat(img.convert("L")).stddev[0]
    assert stddev > 5, "expected a gradient/shapes image, not a flat fill"


def test_text_to_image_jpeg_and_jpg_alias() -> None:
    data = text_to_image("a lighthouse", seed=1, width=256, height=192, output_format="jpeg")
    img = _decode(data)
    assert img.format == "JPEG"
    assert img.size == (256, 192)
    assert text_to_image("a lighthouse", seed=1, width=256, height=192, output_format="jpg") == data


def test_text_to_image_webp() -> None:
    img = _decode(text_to_image("x", seed=1, width=128, height=128, output_format="webp"))
    assert img.format == "WEBP"
    assert img.size == (128, 128)


def test_text_to_image_is_deterministic_per_seed() -> None:
    a = text_to_image("same prompt", seed=42, width=256, height=256)
    b = text_to_image("same prompt", seed=42, width=256, height=256)
    c = text_to_image("same prompt", seed=43, width=256, height=256)
    d = text_to_image("other prompt", seed=42, width=256, height=256)
    assert a == b
    assert a != c
    assert a != d
    assert _mean_abs_diff(_decode(a), _decode(c)) > 5


def test_text_to_image_seed_none_means_zero() -> None:
    assert text_to_image("p", seed=None, width=96, height=96) == text_to_image("p", seed=0, width=96, height=96)


def test_text_to_image_clamps_size() -> None:
    assert _decode(text_to_image("tiny", seed=1, width=1, height=100_000)).size == (64, 2048)


def test_text_to_image_survives_odd_prompts() -> None:
    for prompt in ("", "x" * 20_000, "東京 🚀 café\n\ttab\x00nul\ud800"):
        assert _decode(text_to_image(prompt, seed=3, width=160, height=120)).size == (160, 120)


def test_text_to_image_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="format"):
        text_to_image("p", seed=1, output_format="gif")
    with pytest.raises(ValueError, match="format"):
        text_to_image("p", seed=1, output_format="mp4")


# ------------------------------------------------------------------------------------------ image_to_image


def test_image_to_image_keeps_size_and_changes_pixels(photo: bytes) -> None:
    data = image_to_image(photo, "make it a neon poster", seed=5)
    out = _decode(data)
    assert out.format == "PNG"
    assert out.size == (320, 240)
    assert _mean_abs_diff(out, _decode(photo)) > 20


def test_image_to_image_is_deterministic(photo: bytes) -> None:
    a = image_to_image(photo, "watercolour", seed=9)
    assert a == image_to_image(photo, "watercolour", seed=9)
    assert a != image_to_image(photo, "watercolour", seed=10)


@pytest.mark.parametrize("seed", range(6))
def test_image_to_image_changes_even_a_flat_grey_input(seed: int) -> None:
    grey = _encode(Image.new("RGB", (100, 80), (128, 128, 128)))
    out = _decode(image_to_image(grey, "anything", seed=seed, output_format="jpeg"))
    assert out.format == "JPEG"
    assert out.size == (100, 80)
    assert _mean_abs_diff(out, Image.new("RGB", (100, 80), (128, 128, 128))) > 20


def test_image_to_image_resizes_when_asked(photo: bytes) -> None:
    assert _decode(image_to_image(photo, "p", seed=1, width=200, height=100)).size == (200, 100)
    # One side alone keeps the aspect ratio; both are clamped to 64..2048.
    assert _decode(image_to_image(photo, "p", seed=1, width=160)).size == (160, 120)
    assert _decode(image_to_image(photo, "p", seed=1, width=8, height=9000)).size == (64, 2048)


def test_image_to_image_accepts_other_input_formats() -> None:
    rgba = _encode(Image.new("RGBA", (90, 70), (255, 0, 0, 100)))
    gray_jpeg = _encode(Image.linear_gradient("L").resize((120, 90)), "JPEG")
    for data in (rgba, gray_jpeg):
        src = _decode(data)
        out = _decode(image_to_image(data, "p", seed=2, output_format="webp"))
        assert out.format == "WEBP"
        assert out.size == src.size


@pytest.mark.parametrize("bad", [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 64])
def test_image_to_image_rejects_undecodable_input(bad: bytes) -> None:
    with pytest.raises(ValueError, match="image"):
        image_to_image(bad, "p", seed=1)


def test_image_to_image_rejects_truncated_input(photo: bytes) -> None:
    with pytest.raises(ValueError, match="decoded"):
        image_to_image(photo[: len(photo) // 2], "p", seed=1)


# ------------------------------------------------------------------------------------------ image_to_video


def _probe(data: bytes) -> tuple[dict[str, object], list[Image.Image]]:
    with av.open(io.BytesIO(data), mode="r") as container:
        assert container.format is not None
        stream = container.streams.video[0]
        info: dict[str, object] = {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "duration": float(stream.duration * stream.time_base)
            if stream.duration is not None and stream.time_base is not None
            else None,
            "container_duration": None if container.duration is None else container.duration / av.time_base,
            "rate": stream.average_rate,
        }
        frames = [frame.to_image() for frame in container.decode(stream)]
    return info, frames


def test_image_to_video_is_a_real_h264_mp4_with_motion(photo: bytes) -> None:
    data = image_to_video(photo, "slow push in", seed=4, duration_seconds=2.0, fps=12)
    assert data[4:8] == b"ftyp"
    info, frames = _probe(data)
    assert info["codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    width, height = info["width"], info["height"]
    assert isinstance(width, int) and isinstance(height, int)
    assert width % 2 == 0 and height % 2 == 0
    assert abs(width / height - 320 / 240) < 0.02  # no ratio given: the input's aspect is kept
    assert abs(len(frames) - 24) <= 1
    assert info["rate"] == Fraction(12)
    for key in ("duration", "container_duration"):
        value = info[key]
        assert isinstance(value, float)
        assert abs(value - 2.0) <= 1 / 12 + 0.01
    assert frames[0].size == (width, height)
    assert _mean_abs_diff(frames[0], frames[-1]) > 3
    assert _mean_abs_diff(frames[0], frames[len(frames) // 2]) > 1


def test_image_to_video_ratio_and_max_side(photo: bytes) -> None:
    data = image_to_video(photo, "wide", seed=1, duration_seconds=1.0, fps=8, ratio="16:9", max_side=256)
    info, frames = _probe(data)
    width, height = info["width"], info["height"]
    assert isinstance(width, int) and isinstance(height, int)
    assert max(width, height) <= 256
    assert abs(width / height - 16 / 9) < 0.03
    assert abs(len(frames) - 8) <= 1


@pytest.mark.parametrize(("ratio", "expected"), [("9:16", 9 / 16), ("1:1", 1.0), ("adaptive", 4 / 3)])
def test_image_to_video_other_ratios(photo: bytes, ratio: str, expected: float) -> None:
    data = image_to_video(photo, "p", seed=1, duration_seconds=1.0, fps=4, ratio=ratio, max_side=128)
    info, _ = _probe(data)
    width, height = info["width"], info["height"]
    assert isinstance(width, int) and isinstance(height, int)
    assert abs(width / height - expected) < 0.05


def test_image_to_video_clamps_duration(photo: bytes) -> None:
    data = image_to_video(photo, "p", seed=1, duration_seconds=0.1, fps=6, max_side=128)
    info, frames = _probe(data)
    assert abs(len(frames) - 6) <= 1
    duration = info["duration"]
    assert isinstance(duration, float) and abs(duration - 1.0) <= 1 / 6 + 0.01


def test_image_to_video_rejects_undecodable_input_and_bad_ratio(photo: bytes) -> None:
    with pytest.raises(ValueError, match="image"):
        image_to_video(b"not an image at all", "p", seed=1)
    with pytest.raises(ValueError, match="ratio"):
        image_to_video(photo, "p", seed=1, ratio="wide please")


# ------------------------------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension"),
    [
        ("png", "image/png", ".png"),
        ("jpeg", "image/jpeg", ".jpg"),
        ("jpg", "image/jpeg", ".jpg"),
        ("JPG", "image/jpeg", ".jpg"),
        ("webp", "image/webp", ".webp"),
        ("mp4", "video/mp4", ".mp4"),
    ],
)
def test_content_type_and_extension(fmt: str, content_type: str, extension: str) -> None:
    assert content_type_for(fmt) == content_type
    assert extension_for(fmt) == extension


@pytest.mark.parametrize("fmt", ["gif", "", "image/png", "mov"])
def test_unknown_formats_raise(fmt: str) -> None:
    with pytest.raises(ValueError):
        content_type_for(fmt)
    with pytest.raises(ValueError):
        extension_for(fmt)
