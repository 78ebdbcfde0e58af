"""libvips for the studio, with its operation cache off.

libvips caches operations, loads included, by their arguments — for a file, its name. A file rewritten under
the same name (an artist's re-export of a drawing, a job's canvas made again) then gave the first version's
pixels for the rest of the process. Every module imports pyvips from here (`from blk.vips import pyvips`)."""

import os

import pyvips

pyvips.cache_set_max(0)

__all__ = ["pyvips", "temp_dir"]


def temp_dir() -> str:
    """Where libvips writes the temporary file of an image it must decode whole (a large PNG, JPEG or WebP read
    by region: those formats have no random access), as GLib chooses it: TMPDIR, else /tmp."""
    return os.environ.get("TMPDIR") or "/tmp"
