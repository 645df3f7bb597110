"""What a downloaded or inline body really is: magic-byte sniffing, and the check of a body against what a step
needs (images for image steps, videos for video steps; never SVG or HTML; bytes that agree with their label)."""

from __future__ import annotations

import base64
import io

import av
import pytest
from PIL import Image

from babychain.media_types import MediaRefused, check_declared, check_media, parse_data_uri, sniff


def image_bytes(fmt: str, size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buf, format=fmt)
    return buf.getvalue()


def video_bytes(container: str, codec: str) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_image(Image.new("RGB", (64, 64), (i * 60, 20, 20)))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def data_uri(media_type: str, content: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(content).decode()}"


PNG, JPEG, WEBP, GIF = (image_bytes(f) for f in ("PNG", "JPEG", "WEBP", "GIF"))
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
HTML = b"<!doctype html><html><body>not an image</body></html>"


MP4 = video_bytes("mp4", "h264")
MOV = video_bytes("mov", "h264")
WEBM = video_bytes("webm", "libvpx")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (GIF, "image/gif"),
        (MP4, "video/mp4"),
        (MOV, "video/quicktime"),
        (WEBM, "video/webm"),
        (SVG, "image/svg+xml"),
        (b"  \n<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        (HTML, "text/html"),
        (b"\xef\xbb\xbf<html></html>", "text/html"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", None),  # HEIF: ISO BMFF, but an image
        (b"\x00\x00\x00\x18ftyp3gp5\x00\x00\x00\x00", None),
        (b"%PDF-1.7", None),
        (b"", None),
    ],
)
def test_sniff_tells_what_a_body_is(content: bytes, expected: str | None) -> None:
    assert sniff(content) == expected


@pytest.mark.parametrize(
    ("content", "label", "kind", "expected"),
    [
        (PNG, "image/png", "image", "image/png"),
        (JPEG, "image/jpeg; charset=binary", "image", "image/jpeg"),
        (JPEG, "image/jpg", "image", "image/jpeg"),
        (WEBP, "application/octet-stream", "image", "image/webp"),  # a generic label: the bytes decide
        (PNG, None, "image", "image/png"),
        (MP4, "video/mp4", "video", "video/mp4"),
        (MOV, "video/quicktime", "video", "video/quicktime"),
        (MOV, "video/mp4", "video", "video/quicktime"),  # one container family, labelled loosely
        (WEBM, "video/webm", "video", "video/webm"),
        (MP4, "binary/octet-stream", "video", "video/mp4"),  # S3's default label
    ],
)
def test_check_media_accepts_what_the_step_needs(content: bytes, label: str | None, kind: str, expected: str) -> None:
    assert check_media(content, label, kind) == expected


@pytest.mark.parametrize(
    ("content", "label", "kind", "why"),
    [
        (SVG, "image/svg+xml", "image", "served as image/svg+xml"),
        (HTML, "text/html; charset=utf-8", "image", "served as text/html"),
        (SVG, "image/png", "image", "bytes are image/svg+xml"),  # mislabelled
        (HTML, "image/jpeg", "image", "bytes are text/html"),
        (HTML, "application/octet-stream", "image", "bytes are text/html"),
        (JPEG, "image/png", "image", "served as image/png but its bytes are image/jpeg"),
        (GIF, "image/gif", "image", "served as image/gif"),
        (MP4, "video/mp4", "image", "served as video/mp4"),  # a video where an image is needed
        (PNG, "image/png", "video", "served as image/png"),
        (PNG, "video/mp4", "video", "bytes are image/png"),
        (b"garbage bytes", "video/mp4", "video", "not a known media format"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "video/mp4", "video", "not a known media format"),
    ],
)
def test_check_media_refuses_markup_mislabels_and_other_kinds(
    content: bytes, label: str | None, kind: str, why: str
) -> None:
    with pytest.raises(MediaRefused) as info:
        check_media(content, label, kind)
    assert why in info.value.message


def test_the_label_alone_is_refused_before_any_body() -> None:
    with pytest.raises(MediaRefused):
        check_declared("text/html", "image")
    check_declared("image/webp", "image")
    check_declared(None, "video")


def test_parse_data_uri_returns_the_bytes() -> None:
    assert parse_data_uri(data_uri("image/png", PNG)) == ("image/png", PNG)
    assert parse_data_uri(data_uri("image/JPEG", JPEG)) == ("image/jpeg", JPEG)
