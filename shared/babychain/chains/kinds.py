"""The step kinds, shared by the chain templates and the model catalog.

Their own module so that what only needs the names (the templates, listing runs) does not import the catalog, whose
parameter families are pydantic models.
"""

from __future__ import annotations

TEXT_TO_IMAGE = "text_to_image"
IMAGE_TO_IMAGE = "image_to_image"
IMAGE_TO_VIDEO = "image_to_video"
