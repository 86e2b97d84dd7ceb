"""What ``locvit predict --output DIR`` writes: ``predictions.jsonl`` (or ``predictions.csv``), each image with its
top-k drawn under it (``images/``), one contact sheet of them all, and ``unreadable.txt`` naming the files skipped.

Every file is written into a temporary folder next to ``DIR`` first and moved into ``DIR`` once all of them exist,
so a failure (a full disk, a picture that cannot be drawn) leaves nothing half-written in ``DIR``.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from PIL import Image, ImageDraw, ImageFont

from locvit.files import check_writable

__all__ = ["annotate", "contact_sheet", "fit_tile", "staged", "write_outputs", "write_unreadable"]

TILE = 256  # side of the square an image is fitted into in the pictures
SHEET_MAX = 100  # images on the contact sheet (the first ones)
_LINE = 20


def _font(size: int = 14) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def fit_tile(image: Image.Image, side: int = TILE) -> Image.Image:
    """``image`` scaled to fit a ``side x side`` square (aspect ratio kept; small images such as 8x8 scans enlarged
    with nearest neighbours so their pixels stay visible) and centred on a dark background."""
    w, h = image.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    tile = Image.new("RGB", (side, side), (40, 40, 40))
    tile.paste(image.convert("RGB").resize(size, resample), ((side - size[0]) // 2, (side - size[1]) // 2))
    return tile


def _shorten(draw: ImageDraw.ImageDraw, text: str, width: float, font: Any) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def annotate(image: Image.Image, names: Sequence[str], scores: Sequence[float], side: int = TILE) -> Image.Image:
    """``image`` fitted into a square with its top-k under it: one line per class, most probable first, a bar as long
    as its probability (the first darker), the name and the probability in percent."""
    tile = fit_tile(image, side)
    canvas = Image.new("RGB", (side, side + _LINE * len(names) + 6), "white")
    canvas.paste(tile, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for j, (name, p) in enumerate(zip(names, scores)):
        y = side + 3 + j * _LINE
        draw.rectangle([2, y + 1, 2 + round((side - 4) * float(p)), y + _LINE - 2],
                       fill=(110, 160, 250) if j == 0 else (200, 220, 250))
        pct = f"{100 * p:.1f}%"
        right = side - 6 - draw.textlength(pct, font=font)
        draw.text((6, y + 2), _shorten(draw, name, right - 14, font), fill="black", font=font)
        draw.text((right, y + 2), pct, fill="black", font=font)
    return canvas


def contact_sheet(tiles: Sequence[Image.Image], columns: int = 8, pad: int = 4) -> Image.Image:
    """The pictures side by side on a grid (torchvision's ``make_grid``); all tiles have the same size."""
    import numpy as np
    import torch
    from torchvision.utils import make_grid

    batch = torch.stack([torch.from_numpy(np.array(t.convert("RGB"))).permute(2, 0, 1) for t in tiles])
    grid = make_grid(batch, nrow=min(columns, len(tiles)), padding=pad, pad_value=255)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def picture_name(index: int, source: str) -> str:
    """``images/0003_cat.png``: the input's position first, so files of the same name in two folders stay apart."""
    return f"{index:04d}_{Path(source).stem or 'input'}.png"


@contextlib.contextmanager
def staged(output: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder next to ``output`` to write into; when the block ends without an error its files move
    into ``output`` (created), otherwise they are deleted and ``output`` is left as it was."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; choose a folder")
    parent = output.parent if str(output.parent) else Path(".")
    check_writable(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=parent))
    try:
        yield tmp
        output.mkdir(parents=True, exist_ok=True)
        for src in sorted(tmp.rglob("*")):
            if src.is_file():
                dst = output / src.relative_to(tmp)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def write_outputs(output: str | os.PathLike, predictions: Sequence[Any], unreadable: Sequence[Any] = (),
                  fmt: str = "jsonl", pictures: bool = True, extra: Callable[[Path], None] | None = None,
                  picture: Callable[[str], Image.Image] | None = None) -> list[Path]:
    """Write the predictions (``jsonl``: one JSON object per input; ``csv``: one row per input and rank), the
    pictures and the contact sheet into ``output``, all or nothing (:func:`staged`); ``extra(tmp)`` may add files
    (the ``--explain`` maps); ``picture(source)`` gives the image to draw on (default: the file itself; a clip's
    middle frame for video). Returns the paths written."""
    from locvit.predict.core import to_image

    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"--format {fmt!r}: choose jsonl or csv")
    with staged(output) as tmp:
        if fmt == "jsonl":
            (tmp / "predictions.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in predictions))
        else:
            with open(tmp / "predictions.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["source", "rank", "label", "name", "score"])
                for p in predictions:
                    for r, (lab, name, s) in enumerate(zip(p.labels, p.names, p.scores), 1):
                        w.writerow([p.source, r, lab, name, f"{s:.6f}"])
        write_unreadable(tmp, unreadable)
        if pictures:
            tiles = []
            for i, p in enumerate(predictions):
                tile = annotate((picture or to_image)(p.source), p.names, p.scores)
                save_png(tile, tmp / "images" / picture_name(i, p.source))
                if i < SHEET_MAX:
                    tiles.append(tile)
            save_png(contact_sheet(tiles), tmp / "contact_sheet.png")
        if extra is not None:
            extra(tmp)
        names = sorted(f.relative_to(tmp) for f in tmp.rglob("*") if f.is_file())
    return [Path(output) / n for n in names]


def write_unreadable(folder: Path, unreadable: Sequence[Any]) -> None:
    """``unreadable.txt``: each skipped file and why, one a line (nothing when every file was read)."""
    if unreadable:
        (folder / "unreadable.txt").write_text("".join(f"{u.path}\t{u.reason}\n" for u in unreadable))
