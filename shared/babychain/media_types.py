"""Media formats: output formats with their MIME types and extensions, what each step kind may download, and the
magic-byte sniffing that tells what a body really is. No dependencies: the Lambda executor needs these too."""

from __future__ import annotations

import base64
import binascii
import re

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "mp4": ".mp4"}

# What a step of each kind may download (a provider's output, or an input image): never SVG, HTML or anything a
# browser would run. The extension is the one the durable copy is stored under.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
VIDEO_TYPES = ("video/mp4", "video/webm", "video/quicktime")
MEDIA_TYPES_BY_KIND = {"image": IMAGE_TYPES, "video": VIDEO_TYPES}
EXTENSION_BY_CONTENT_TYPE = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
}
# Labels that say nothing about the body (S3's default among them): the sniffed type decides.
GENERIC_TYPES = ("", "application/octet-stream", "binary/octet-stream")
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "video/x-quicktime": "video/quicktime"}
# MP4 and QuickTime share one container (ISO BMFF); players and providers label them loosely.
_SAME_CONTAINER = {"video/quicktime": "video/mp4"}

# ISO BMFF major brands (bytes 8-12 after `ftyp`) of MP4 video; `qt  ` is QuickTime. HEIF/AVIF images share the box
# layout with other brands, so a brand outside these lists is not a video.
_MP4_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9", b"mp41", b"mp42", b"avc1"}
    | {b"M4V ", b"M4VH", b"M4VP", b"dash", b"mmp4", b"MSNV", b"f4v ", b"XAVC", b"NDAS"}
)
_MARKUP_START = (b"<", b"\xef\xbb\xbf<")
# `data:<type>;base64,<payload>` and nothing else: no charset or other parameters, no percent-encoded form.
_DATA_URI = re.compile(r"data:([a-z]+/[a-z0-9.+-]+);base64,([A-Za-z0-9+/]+={0,2})", re.IGNORECASE)


class MediaRefused(ValueError):
    """A body is not media the step can use (wrong or unknown type, or a label its bytes contradict)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def normalize_format(output_format: str) -> str:
    fmt = str(output_format).strip().lower().lstrip(".")
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unsupported output format {output_format!r}; expected one of png, jpeg, jpg, webp, mp4")
    return fmt


def content_type_for(output_format: str) -> str:
    """MIME type for an output format ("png", "jpeg"/"jpg", "webp", "mp4")."""
    return CONTENT_TYPES[normalize_format(output_format)]


def extension_for(output_format: str) -> str:
    """File extension, with the dot, for an output format (JPEG is ".jpg")."""
    return EXTENSIONS[normalize_format(output_format)]


def declared_type(header: str | None) -> str:
    """The MIME type of a Content-Type header, lower-case, without parameters, aliases folded (`image/jpg`)."""
    media_type = (header or "").split(";", 1)[0].strip().lower()
    return _ALIASES.get(media_type, media_type)


def sniff(content: bytes) -> str | None:
    """What the first bytes say the body is: one of the media types above, `image/gif`, `image/svg+xml` or
    `text/html` for markup, or None when they match nothing known."""
    head = content[:64]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: WebM is the Matroska profile whose DocType says so
        return "video/webm" if b"webm" in head else "video/x-matroska"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "video/quicktime"
        return "video/mp4" if brand in _MP4_BRANDS else None
    if head[4:8] in (b"moov", b"wide", b"mdat"):  # QuickTime files written before the ftyp box existed
        return "video/quicktime"
    text = head.lstrip(b" \t\r\n")
    if text.startswith(_MARKUP_START):
        return "image/svg+xml" if b"<svg" in content[:1024].lower() else "text/html"
    return None


def check_declared(header: str | None, kind: str) -> None:
    """Refuse a Content-Type that names something a `kind` step cannot use, before its body is read."""
    allowed = MEDIA_TYPES_BY_KIND[kind]
    label = declared_type(header)
    if label not in GENERIC_TYPES and label not in allowed:
        raise MediaRefused(f"The file is served as {label}; {_needs(kind)}.")


def check_media(content: bytes, header: str | None, kind: str) -> str:
    """The media type of `content` for a `kind` step ("image" or "video"); MediaRefused unless its bytes are one
    of that kind's types and agree with the Content-Type it was served with."""
    check_declared(header, kind)
    actual = sniff(content)
    if actual is None:
        raise MediaRefused(f"The file's bytes are not a known media format; {_needs(kind)}.")
    if actual not in MEDIA_TYPES_BY_KIND[kind]:
        raise MediaRefused(f"The file's bytes are {actual}; {_needs(kind)}.")
    label = declared_type(header)
    if label not in GENERIC_TYPES and _SAME_CONTAINER.get(label, label) != _SAME_CONTAINER.get(actual, actual):
        raise MediaRefused(f"The file is served as {label} but its bytes are {actual}.")
    return actual


def parse_data_uri(uri: str) -> tuple[str, bytes]:
    """(media type, bytes) of a `data:<type>;base64,<payload>` URI whose bytes are the type it names; MediaRefused
    otherwise (another form, bad base64, or bytes of another type)."""
    match = _DATA_URI.fullmatch(uri)
    if match is None:
        raise MediaRefused("A data: URI must have the form data:<image type>;base64,<base64 data>.")
    media_type = declared_type(match.group(1))
    try:
        content = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise MediaRefused("The data: URI's base64 data is not valid.") from None
    actual = sniff(content)
    if actual != media_type:
        raise MediaRefused(f"The data: URI says {media_type} but its bytes are {actual or 'not a known format'}.")
    return media_type, content


def _needs(kind: str) -> str:
    return f"a {kind} step needs {', '.join(MEDIA_TYPES_BY_KIND[kind])}"
