"""Interim single-directory index format: ``index.json`` + ``arrays.npz``.

Written to a temporary directory and renamed into place, so a crash leaves
either the old or the new index. The Arrow/Parquet store (``shardann.storage``)
is the long-term format.
"""

import json
import os
import shutil
import uuid

import numpy as np

from ..errors import CorruptIndexError

FORMAT = "shardann-interim"
FORMAT_VERSION = 1


def _index_classes():
    from .flat import FlatIndex
    from .ivf import IVFFlatIndex, IVFPQIndex
    return {c.kind: c for c in (FlatIndex, IVFFlatIndex, IVFPQIndex)}


def save_index(index, path):
    """Write ``index`` to directory ``path``, replacing what was there."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    os.makedirs(tmp)
    try:
        arrays = {f"trained/{k}": v for k, v in index._trained_arrays().items()}
        if index._lists is not None and index.is_trained:
            sizes, ids, data = index._lists.packed()
            arrays["lists/sizes"] = sizes
            arrays["lists/ids"] = ids
            for k, v in data.items():
                arrays[f"lists/{k}"] = v
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": index.kind,
                "config": index.get_config(), "trained": index.is_trained,
                "ntotal": index.ntotal}
        with open(os.path.join(tmp, "arrays.npz"), "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(tmp, "index.json"), "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):
            old = f"{tmp}.old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_index(path):
    """Open an index written by ``index.save(path)``."""
    path = os.fspath(path)
    meta_path = os.path.join(path, "index.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"no shardann index at {path!r} (missing index.json)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except ValueError as exc:
        raise CorruptIndexError(f"{meta_path}: unreadable ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CorruptIndexError(f"{meta_path}: not a {FORMAT} index")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CorruptIndexError(
            f"{meta_path}: format version {meta['format_version']} is newer than this "
            f"shardann understands ({FORMAT_VERSION}); upgrade shardann")
    classes = _index_classes()
    if meta.get("kind") not in classes:
        raise CorruptIndexError(f"{meta_path}: unknown index kind {meta.get('kind')!r}")
    index = classes[meta["kind"]](**meta["config"])
    arrays_path = os.path.join(path, "arrays.npz")
    try:
        with np.load(arrays_path) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise CorruptIndexError(f"{arrays_path}: unreadable ({exc})") from exc
    if meta["trained"]:
        trained = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("trained/")}
        index._set_trained_arrays(trained)
        data = {k.split("/", 1)[1]: v for k, v in arrays.items()
                if k.startswith("lists/") and k not in ("lists/sizes", "lists/ids")}
        if "lists/sizes" in arrays:
            index._set_lists(arrays["lists/sizes"], arrays["lists/ids"], data)
    if index.ntotal != meta["ntotal"]:
        raise CorruptIndexError(
            f"{path}: holds {index.ntotal} vectors but index.json says {meta['ntotal']}")
    return index
