"""Imported by the container fork server: loads every handler once, so each container process starts warm."""

from babychain.local.containers import preload

preload()
