"""Sizes as people read them, in command output and in notification texts alike."""


def human_size(size: int | None) -> str:
    """Return a size like `512 B`, `1.5 MiB`."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
