"""Burned-in text: find it in the pixels and mask what identifies (Clean Pixel Data)."""
