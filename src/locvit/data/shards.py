"""Sharded datasets: WebDataset tar files (``--data wds:SHARDS``) for training and evaluation, and the writer behind
``locvit shards``.

A shard is a plain tar file of samples ``<key>.<image extension>`` + ``<key>.cls`` (the class index as text), the
layout of WebDataset and of timm's ``wds/`` datasets. ``SHARDS`` is either

- a folder or URL holding ``_info.json`` (timm's format: ``splits.<name>.filenames``, ``num_samples``,
  ``shard_lengths``; ``locvit shards`` also stores ``classes`` and each shard's size in bytes), whose ``train`` and
  ``val`` splits are used, or
- a pattern of shard files or URLs, ``train-{000000..000127}.tar`` (brace ranges; ``*`` for local files), where
  ``{split}`` stands for ``train`` / ``val``. Counts and classes come from an ``_info.json`` beside the shards, or
  from reading the shards once when there is none.

Training streams (no random access): each epoch, the shards are shuffled from ``(seed, epoch)`` and dealt to the
``ranks x workers`` streams (or, with fewer shards than streams, every stream reads all shards and keeps every
``n``-th sample); each stream passes its samples through a shuffle buffer seeded by ``(seed, epoch, rank, stream)``
and starts over with a new shard order (resampling) until it has given its share of the epoch: every rank gets the
same number of whole optimiser steps. Augmentation is seeded per sample by ``(seed, epoch, index)`` as for folders,
the index being the sample's key when it is a number (``locvit shards`` writes the folder dataset's index), so a
shard run and a folder run augment an image alike. A resumed run skips the epoch's first samples undecoded: it
continues the interrupted one exactly when the number of processes and ``--workers`` are unchanged; with other
``--workers`` it resumes at the same sample count of a different shuffle. Evaluation reads every sample exactly once
over all ranks and workers, without shuffling or resampling.

An image that does not decode (or a sample without one) becomes an :class:`~locvit.data.datasets.Unreadable` record
named ``SHARD/KEY``, skipped and counted like an unreadable file; a truncated shard stops the run with a message
naming it (local shards are checked against their recorded size, or read through, before training).
"""
from __future__ import annotations

import glob
import io
import json
import os
import random
import tarfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from locvit.data.datasets import DECODE_ERRORS, Unreadable, seed_sample, to_rgb
from locvit.files import atomic_write, atomic_write_text, check_writable

INFO = "_info.json"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "gif")
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "validation", "valid", "test")}


def _webdataset():
    try:
        import webdataset
    except ImportError:
        raise ValueError("--data wds:... reads WebDataset shards with the webdataset package: "
                         "pip install 'locvit[data]' (or pip install webdataset)") from None
    return webdataset


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def _read_text(url: str) -> str | None:
    """A small file (``_info.json``) from a local path or any URL WebDataset opens; None when it is absent (and for
    ``pipe:`` commands, where no file can be placed beside the shards)."""
    if url.startswith("pipe:"):
        return None
    if not _is_url(url):
        p = Path(_local(url))
        return p.read_text() if p.is_file() else None
    wds = _webdataset()
    try:
        with wds.gopen(url, "rb") as f:
            return f.read().decode() or None
    except Exception:  # an absent info file on a server: the shards are counted instead
        return None


def _parent(url: str) -> str:
    return url.rsplit("/", 1)[0] if "/" in url else "."


def _join(root: str, name: str) -> str:
    if _is_url(name) or os.path.isabs(name) or root in ("", "."):
        return name
    return f"{root.rstrip('/')}/{name}"


def _load_info(text: str | None, where: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        info = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{where} is not valid JSON ({e}); write the shards again with `locvit shards`, or remove "
                         "it to have the shards counted") from None
    if not isinstance(info, dict):
        raise ValueError(f"{where} is not an info file (a JSON object with 'splits')")
    return info


def _expand(pattern: str) -> list[str]:
    """Brace ranges and lists (``{000..127}``, ``{a,b}``) and, for local paths, ``*`` / ``?`` wildcards."""
    import braceexpand

    out: list[str] = []
    for p in braceexpand.braceexpand(pattern):
        if not _is_url(p) and any(c in p for c in "*?["):
            out += sorted(glob.glob(_local(p)))
        else:
            out.append(p)
    return out


class ShardSpec:
    """One split of ``--data wds:SHARDS``: its shard URLs, their sample counts, the classes."""

    def __init__(self, spec: str, split: str):
        _webdataset()
        self.spec = spec
        names = SPLIT_NAMES[split]
        if ".tar" not in spec:  # a dataset root with _info.json
            text = _read_text(_join(spec, INFO))
            if text is None:
                raise FileNotFoundError(f"wds:{spec}: no {INFO} there; pass a shard pattern such as "
                                        f"wds:{spec.rstrip('/')}/{{split}}-{{000000..000009}}.tar, or write the "
                                        "shards with `locvit shards`")
            info = _load_info(text, _join(spec, INFO))
            found = next((n for n in names if n in info.get("splits", {})), None)
            if found is None:
                raise FileNotFoundError(f"wds:{spec}: {INFO} has no '{names[0]}' split (it has "
                                        f"{sorted(info.get('splits', {}))})")
            self.urls = [_join(spec, f) for f in _expand_all(info["splits"][found]["filenames"])]
            root = spec
        else:
            pattern = spec.replace("{split}", names[0])
            self.urls = _expand(pattern)
            root = _parent(pattern)
            info = _load_info(_read_text(_join(root, INFO)), _join(root, INFO))
        if not self.urls:
            raise FileNotFoundError(f"wds:{spec}: the pattern matches no shard")
        missing = [u for u in self.urls if not _is_url(u) and not Path(_local(u)).is_file()]
        if missing:
            raise FileNotFoundError(f"wds:{spec}: {len(missing)} of {len(self.urls)} shards do not exist "
                                    f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        known = _shard_table(info, root)
        self.lengths: list[int] = []
        labels: set[int] = set()
        for u in self.urls:
            entry = known.get(u)
            if entry is not None:
                self.lengths.append(entry[0])
                if entry[1] is not None and not _is_url(u) and os.path.getsize(_local(u)) != entry[1]:
                    raise ValueError(f"shard {u} holds {os.path.getsize(_local(u)):,} bytes but {INFO} records "
                                     f"{entry[1]:,}: it is truncated or was changed; write it again "
                                     "(locvit shards) or leave it out of the pattern")
            else:
                n, found_labels = count_shard(u)
                self.lengths.append(n)
                labels |= found_labels
        self.num_samples = sum(self.lengths)
        if self.num_samples == 0:
            raise ValueError(f"wds:{spec}: the shards hold no samples")
        if info.get("classes"):
            self.classes = [str(c) for c in info["classes"]]
        else:
            self.classes = [str(i) for i in range(max(labels, default=-1) + 1)]


def _expand_all(filenames: list[str] | str) -> list[str]:
    return _expand(filenames) if isinstance(filenames, str) else [f for name in filenames for f in _expand(name)]


def _shard_table(info: dict[str, Any], root: str) -> dict[str, tuple[int, int | None]]:
    """URL -> (samples, bytes or None) for every shard an ``_info.json`` lists with its length."""
    table: dict[str, tuple[int, int | None]] = {}
    for split in (info.get("splits") or {}).values():
        files = _expand_all(split.get("filenames", []))
        lengths = split.get("shard_lengths") or []
        sizes = split.get("shard_bytes") or [None] * len(lengths)
        if len(files) == len(lengths):
            table.update({_join(root, f): (int(n), b) for f, n, b in zip(files, lengths, sizes)})
    return table


def _truncated(url: str, e: BaseException) -> ValueError:
    reason = str(e).split(" @ ")[0]  # webdataset appends the stream object
    return ValueError(f"shard {url} cannot be read to its end ({type(e).__name__}: {reason}): it is truncated or not a "
                      "tar file; write it again (locvit shards) or leave it out of the pattern")


def count_shard(url: str) -> tuple[int, set[int]]:
    """(samples, class indices) of one shard, reading it through; a truncated shard raises ``ValueError``."""
    keys: set[str] = set()
    labels: set[int] = set()
    for s in _raw_samples(url):
        keys.add(s["__key__"])
        label = s.get("cls", b"").decode(errors="replace").strip()
        if label.isdigit():  # a sample without a class index is counted, and skipped when it is read
            labels.add(int(label))
    return len(keys), labels


class _Tail:
    """A read-only stream that remembers its last 512 bytes: a complete tar file ends in zero blocks, and tarfile
    alone takes a file cut at a block boundary for a complete one."""

    def __init__(self, f: Any):
        self.f, self.tail = f, b""

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if data:
            self.tail = (self.tail + data)[-512:]
        return data

    def close(self) -> None:
        self.f.close()


def _raw_samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard as dicts of bytes (``__key__``, ``__url__``, ``jpg``, ``cls``...), undecoded."""
    wds = _webdataset()
    from webdataset import tariterators

    try:
        stream = _Tail(wds.gopen(url, "rb"))
    except (OSError, ValueError) as e:
        raise ValueError(f"shard {url} cannot be opened ({type(e).__name__}: {e})") from None
    try:
        files = (dict(f, __url__=url) for f in tariterators.tar_file_iterator(stream))
        yield from tariterators.group_by_keys(files)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise _truncated(url, e) from None
    finally:
        stream.close()
    if url.endswith(".tar") and stream.tail.strip(b"\0"):  # ended without the end-of-archive blocks
        raise _truncated(url, EOFError("the file ends inside the archive, before its end-of-archive blocks"))


def sample_index(key: str, url: str) -> int:
    """The sample's index for per-sample seeding: its key when it is a number (``locvit shards`` writes the folder
    dataset's index), else a checksum of shard and key."""
    return int(key) if key.isdigit() else zlib.crc32(f"{url}/{key}".encode()) + (1 << 32)


class ShardDataset(IterableDataset):
    """The samples of a :class:`ShardSpec` as ``(image, target)`` (or :class:`Unreadable`), streamed; see the module
    docstring for the order. :func:`locvit.data.loader.build_loader` configures it with :meth:`configure`."""

    def __init__(self, spec: ShardSpec, transform: Callable | None = None, seed: int = 0, shuffle_buffer: int = 1000):
        self.spec = spec
        self.urls = spec.urls
        self.num_samples = spec.num_samples
        self.classes = spec.classes
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.root = f"wds:{spec.spec}"
        self.transform, self.seed, self.shuffle_buffer = transform, seed, shuffle_buffer
        self.epoch, self.start = 0, 0
        self.training, self.batch_size, self.rank, self.world, self.repeats = False, 1, 0, 1, 1
        self.per_rank = self.num_samples

    def configure(self, training: bool, batch_size: int, rank: int, world: int, repeats: int = 1,
                  multiple: int = 1) -> None:
        """Training: each rank gives ``num_samples x repeats / world`` samples an epoch, rounded down to
        ``multiple`` (its whole optimiser steps); evaluation: every sample once over the ranks."""
        self.training, self.batch_size, self.rank, self.world = training, batch_size, rank, world
        self.repeats = max(1, repeats) if training else 1
        if training:
            self.per_rank = self.num_samples * self.repeats // world // multiple * multiple
            if self.per_rank < batch_size:
                raise ValueError(f"the training shards hold {self.num_samples} samples: fewer than one optimiser "
                                 f"step ({multiple} samples) per process; lower --batch-size or --grad-accum-steps")

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip its first ``start`` samples of this rank (a resumed run)."""
        self.epoch, self.start = epoch, start

    def batches(self) -> int:
        """Training batches of this rank in an epoch."""
        return self.per_rank // self.batch_size

    def __len__(self) -> int:
        return self.per_rank if self.training else self.num_samples

    def load(self, raw: dict[str, Any]) -> tuple[Any, int]:
        """Decode one raw sample; an image that does not decode becomes an :class:`Unreadable` record."""
        url, key = raw.get("__url__", "?"), raw["__key__"]
        index = sample_index(key, url)
        where = f"{url}/{key}"
        try:
            target = int(raw["cls"].decode().strip())
        except (KeyError, ValueError, UnicodeDecodeError):
            return Unreadable(index, where, "no .cls class index in the sample"), -1
        ext = next((e for e in IMAGE_EXTS if e in raw), None)
        if ext is None:
            return Unreadable(index, where, f"no image in the sample (it holds {sorted(raw)})"), target
        try:
            with Image.open(io.BytesIO(raw[ext])) as im:
                img = to_rgb(im)
        except DECODE_ERRORS as e:
            return Unreadable(index, where, f"{type(e).__name__}: {e}"), target
        if self.transform is not None:
            seed_sample(self.seed, self.epoch, index)
            img = self.transform(img)
        return img, target

    def first_readable(self, max_tries: int = 64) -> bool:
        """Whether one of the first samples of the first shards decodes (checked before training)."""
        tried = 0
        for url in self.urls:
            for raw in _raw_samples(url):
                saved, self.transform = self.transform, None
                try:
                    img, _ = self.load(raw)
                finally:
                    self.transform = saved
                if not isinstance(img, Unreadable):
                    return True
                tried += 1
                if tried >= max_tries:
                    return False
        return False

    def _stream(self, urls: list[str], slot: int, slots: int) -> Iterator[dict[str, Any]]:
        """Raw samples of ``urls`` for stream ``slot`` of ``slots``: whole shards when there are enough, else every
        ``slots``-th sample."""
        if len(urls) >= slots:
            for url in urls[slot::slots]:
                yield from _raw_samples(url)
            return
        j = 0
        for url in urls:
            for raw in _raw_samples(url):
                if j % slots == slot:
                    yield raw
                j += 1

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        if not self.training:
            for raw in self._stream(self.urls, self.rank * workers + worker, self.world * workers):
                yield self.load(raw)
            return
        # Training: batch b of the epoch comes from stream b % workers. A resumed iterator's worker w yields the
        # resumed run's batches w, w + workers, ..., i.e. batches start_b + w + k * workers: it plays the stream
        # those batches came from in an uninterrupted run, skipping (undecoded) what that stream gave before.
        start_b = self.start // self.batch_size
        stream = (start_b + worker) % workers
        total = self.batches()
        before = len(range(stream, start_b, workers))
        mine = len(range(stream, total, workers)) - before
        raw = self._train_stream(stream, workers)
        for _ in range(before * self.batch_size):
            next(raw)
        for _ in range(mine * self.batch_size):
            yield self.load(next(raw))

    def _train_stream(self, stream: int, workers: int) -> Iterator[dict[str, Any]]:
        """Stream ``stream`` of this rank, endless: passes over the shards, each in a new order and through a
        shuffle buffer that is emptied at the pass's end (so a pass gives each of its samples once)."""
        slots, slot = self.world * workers, self.rank * workers + stream
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{stream}")
        passes = 0
        while True:
            order = list(self.urls)
            random.Random(f"{self.seed}/{self.epoch}/pass{passes}").shuffle(order)
            buffer: list[dict[str, Any]] = []
            got = 0
            for raw in self._stream(order, slot, slots):
                got += 1
                for _ in range(self.repeats):
                    if len(buffer) < self.shuffle_buffer:
                        buffer.append(raw)
                        continue
                    i = rng.randrange(len(buffer))
                    out, buffer[i] = buffer[i], raw
                    yield out
            rng.shuffle(buffer)
            yield from buffer
            if not got:
                raise ValueError(f"{self.root}: training stream {slot} of {slots} gets no sample (fewer samples than "
                                 "processes x --workers); use fewer --workers")
            passes += 1


def write_shards(data: str, output: str | os.PathLike, shard_size: int = 1000,
                 splits: tuple[str, ...] = ("train", "val"),
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the splits of ``data`` (anything ``--data`` takes but shards: a folder, ``digits``, ``cifar10:ROOT``) as
    ``OUTPUT/<split>-NNNNNN.tar`` shards of ``shard_size`` samples, in the dataset's index order (keys are the
    indices, so shard and folder runs seed augmentation alike), with ``OUTPUT/_info.json``. Image files are stored
    as they are; in-memory datasets as PNG. Every file is written atomically; ``_info.json`` last. Returns the info."""
    from locvit.data.datasets import ArrayDataset, ImageFolderDataset, build_dataset

    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    if data.startswith("wds:"):
        raise ValueError("--data is already sharded; pass a folder, 'digits' or 'cifar10:ROOT'")
    out = check_writable(output)
    info: dict[str, Any] = dict(name=Path(str(data)).name, splits={})
    class_to_idx = None
    for split in splits:
        ds = build_dataset(data, split, class_to_idx=class_to_idx)
        class_to_idx = getattr(ds, "class_to_idx", None) or {c: i for i, c in enumerate(ds.classes)}
        info.setdefault("classes", list(ds.classes))
        names, lengths, sizes = [], [], []
        for first in range(0, len(ds), shard_size):
            name = f"{split}-{len(names):06d}.tar"
            idx = range(first, min(first + shard_size, len(ds)))

            def write(f, idx=idx, ds=ds):
                with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                    for i in idx:
                        if isinstance(ds, ImageFolderDataset):
                            path = Path(ds.samples[i][0])
                            payload, ext = path.read_bytes(), path.suffix.lstrip(".").lower() or "img"
                        elif isinstance(ds, ArrayDataset):
                            buf = io.BytesIO()
                            to_rgb(Image.fromarray(ds.images[i])).save(buf, format="PNG")
                            payload, ext = buf.getvalue(), "png"
                        else:  # pragma: no cover - build_dataset returns one of the two
                            raise TypeError(type(ds))
                        for suffix, content in ((ext, payload), ("cls", str(ds.target(i)).encode())):
                            member = tarfile.TarInfo(f"{i:08d}.{suffix}")
                            member.size, member.mtime, member.mode = len(content), 0, 0o644
                            tar.addfile(member, io.BytesIO(content))

            path = atomic_write(out / name, write)
            names.append(name)
            lengths.append(len(idx))
            sizes.append(path.stat().st_size)
        info["splits"][split] = dict(name=split, num_samples=len(ds), filenames=names, shard_lengths=lengths,
                                     shard_bytes=sizes)
        if log:
            log(f"{split}: {len(ds)} samples in {len(names)} shards ({names[0]} .. {names[-1]})")
    atomic_write_text(out / INFO, json.dumps(info, indent=1) + "\n")
    return info
