"""image.* job types with Pillow (CPU-bound: process pool).

image.resize   to `width` and/or `height`; with both and keep_aspect (default)
               the image is fitted inside the box
image.convert  to png | jpeg | webp | gif | bmp | tiff (`quality` for jpeg/webp)
image.filter   grayscale | blur | sharpen | thumbnail | edges | contour

Inputs larger than MAX_PIXELS are refused before decoding (a decompression
bomb is a tiny file that decodes to gigabytes); a file Pillow cannot read is a
non-retryable error. Outputs are written atomically under the data root.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from worker.context import JobContext
from worker.jobs.safety import atomic_output, in_root, open_in, rel, stat_in
from worker.registry import BadArgument, parse_args

MAX_PIXELS = 64_000_000
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP",
           "tiff": "TIFF"}
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff"}


def _open(ctx: JobContext, args: dict) -> tuple[Path, Any]:
    from PIL import Image, UnidentifiedImageError

    src = in_root(ctx, args["path"], "path", want="file")
    try:
        # Our own file handle, so it is closed whatever Pillow raises.
        with open_in(ctx, src) as fh, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fh)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise BadArgument(f"'path': {args['path']!r} is {w}x{h} pixels, more than the {MAX_PIXELS} allowed")
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadArgument(f"'path': {args['path']!r} is not an image Pillow can read ({exc})") from None
    except OSError as exc:
        raise BadArgument(f"'path': {args['path']!r} cannot be decoded ({exc})") from None
    return src, img


def _target_format(args: dict, default_fmt: str | None) -> str:
    """`args` as parse_args returned them (a `format` given is one of FORMATS)."""
    name = args.get("format")
    if name is None:
        out = args.get("output")
        if out is not None and Path(out).suffix.lower().lstrip(".") in FORMATS:
            return FORMATS[Path(out).suffix.lower().lstrip(".")]
        return default_fmt or "PNG"
    return FORMATS[name.lower()]


def _save(ctx: JobContext, img: Any, src: Path, args: dict, fmt: str, tag: str) -> dict:
    default = src.with_name(f"{src.stem}-{tag}{EXTENSIONS[fmt]}")
    out = in_root(ctx, args.get("output", str(default)), "output", want="file", must_exist=False)
    if out == src:
        raise BadArgument("'output' must differ from 'path'")
    quality = args["quality"]
    if fmt in ("JPEG", "BMP") and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")  # JPEG/BMP have no alpha channel
    if fmt == "GIF" and img.mode not in ("P", "L"):
        img = img.convert("P", palette=1)  # adaptive palette
    params: dict[str, Any] = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with atomic_output(out, ctx=ctx) as fh:
        img.save(fh, format=fmt, **params)
    ctx.progress(1.0, "saved")
    return {"path": rel(ctx, src), "output": rel(ctx, out), "format": fmt.lower(), "width": img.width,
            "height": img.height, "mode": img.mode, "bytes": stat_in(ctx, out).st_size}


def image_resize(args: dict, ctx: JobContext) -> dict:
    """Resize `path` to `width`/`height` (keep_aspect: fit inside the box)."""
    from PIL import Image

    args = parse_args("image.resize", args)
    width, height, keep = args.get("width"), args.get("height"), args["keep_aspect"]
    src, img = _open(ctx, args)
    fmt = _target_format(args, img.format)
    w0, h0 = img.size
    if width is None:
        width = max(1, round(w0 * height / h0))
    elif height is None:
        height = max(1, round(h0 * width / w0))
    elif keep:
        scale = min(width / w0, height / h0)
        width, height = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    ctx.progress(0.3, f"resizing {w0}x{h0} to {width}x{height}")
    resized = img.resize((width, height), Image.Resampling.LANCZOS)
    out = _save(ctx, resized, src, args, fmt, f"{width}x{height}")
    out["original"] = [w0, h0]
    return out


def image_convert(args: dict, ctx: JobContext) -> dict:
    """Convert `path` to another `format` (png, jpeg, webp, gif, bmp, tiff)."""
    args = parse_args("image.convert", args)
    src, img = _open(ctx, args)
    fmt = _target_format(args, None)
    ctx.progress(0.5, f"converting {img.format} to {fmt}")
    out = _save(ctx, img, src, args, fmt, "converted")
    out["from"] = (img.format or "").lower()
    return out


def image_filter(args: dict, ctx: JobContext) -> dict:
    """Apply `filter` (grayscale, blur, sharpen, thumbnail, edges, contour) to `path`."""
    from PIL import ImageFilter, ImageOps

    args = parse_args("image.filter", args)
    name, radius, size = args["filter"], args["radius"], args["size"]
    src, img = _open(ctx, args)
    fmt = _target_format(args, img.format)
    ctx.progress(0.3, f"applying {name}")
    if name == "grayscale":
        out_img = ImageOps.grayscale(img)
    elif name == "blur":
        out_img = img.filter(ImageFilter.GaussianBlur(radius))
    elif name == "sharpen":
        out_img = img.filter(ImageFilter.SHARPEN)
    elif name == "thumbnail":
        out_img = img.copy()
        out_img.thumbnail((size, size))
    else:
        base = img.convert("RGB") if img.mode not in ("RGB", "L") else img
        out_img = base.filter(ImageFilter.FIND_EDGES if name == "edges" else ImageFilter.CONTOUR)
    out = _save(ctx, out_img, src, args, fmt, name)
    out["filter"] = name
    return out


JOBS: dict[str, tuple[Any, str]] = {
    "image.resize": (image_resize, "process"),
    "image.convert": (image_convert, "process"),
    "image.filter": (image_filter, "process"),
}
