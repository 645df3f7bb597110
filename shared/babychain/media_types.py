"""Output formats, their MIME types and file extensions. No dependencies: the Lambda executor needs these too."""

from __future__ import annotations

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "mp4": ".mp4"}
EXTENSION_BY_CONTENT_TYPE = {content_type: EXTENSIONS[fmt] for fmt, content_type in CONTENT_TYPES.items()}


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
