"""Maintenance of a store: compaction, vacuum, full verification and repair of a
damaged newest manifest."""

import copy
import datetime
import time

import numpy as np

from ..errors import CorruptIndexError
from . import _manifest
from ._calibration import CALIBRATION_DIR
from ._files import file_crc32
from ._fs import location
from ._grouping import group_by_list, hits
from ._manifest import DAMAGED_PREFIX, FORMAT_VERSION, MANIFEST_DIR, FutureFormatError
from ._segments import ATTRIBUTES, SegmentFile
from ._transaction import MAX_SEGMENT_ROWS, Transaction
from ._view import SEGMENT_DIR, TOMBSTONE_DIR, StoreView


def compact(view, *, min_rows=None, max_segment_rows=MAX_SEGMENT_ROWS):
    """See :meth:`IndexStore.compact`."""
    segs = view._m["files"]["segments"]
    if min_rows is None:
        picked = segs
    else:
        picked = [s for s in segs
                  if s["rows"] - s.get("deleted", 0) < min_rows or s.get("deleted", 0)]
    has_deleted = any(s.get("deleted", 0) for s in picked)
    if len(picked) < 2 and not has_deleted:
        return view
    _manifest.check_unpublished(view.location, view.version + 1, _manifest.TRANSACTION_ADVICE)
    txn = Transaction(view, operation="compact")
    names = view._payload_names()
    if view.attribute_schema is not None:
        names = names + [ATTRIBUTES]
    parts = view._live_rows(picked, None, names)
    try:
        txn.keep_calibration()  # the same live rows: its neighbours still hold
        txn.drop_segments(s["path"] for s in picked)
        if parts:
            sizes, ids, payload = group_by_list(parts, view.nlist, names)
            attrs = payload.pop(ATTRIBUTES, None)
            txn.add_lists(sizes, ids, payload, max_segment_rows=max_segment_rows,
                          attributes=attrs)
        new = txn.commit()
    except BaseException:
        if txn.committed is None:
            txn.abort()
        raise
    if new.ntotal != view.ntotal:
        raise CorruptIndexError(
            f"{view.path}: compaction changed ntotal {view.ntotal} -> {new.ntotal}")
    return new


def vacuum(view, keep=1, *, grace_seconds=3600.0):
    """See :meth:`IndexStore.vacuum`."""
    if int(keep) < 1:
        raise ValueError(f"keep must be >= 1; got {keep}")
    loc = view.location
    # a damaged (or newer-format) newest manifest may name files no readable one does:
    # deleting them would make it unrecoverable; the operator repairs first
    _manifest.read_newest(loc)
    readable = {}
    for v in _manifest.list_versions(loc):
        try:
            readable[v] = _manifest.read(loc, v)
        except (CorruptIndexError, FileNotFoundError):
            pass
    ordered = sorted(readable)
    kept = set(ordered[-int(keep):])
    dropped = [v for v in ordered if v not in kept]

    def files_of(m):
        f = m["files"]
        out = {s["path"] for s in f["segments"]} | {t["path"] for t in f["tombstones"]}
        for single in ("codebooks", "calibration"):
            if f.get(single):
                out.add(f[single]["path"])
        return out

    keep_files = set().union(*(files_of(readable[v]) for v in kept))
    known = set().union(*(files_of(m) for m in readable.values())) if readable else set()
    removed_files, freed = [], 0
    for v in dropped:
        loc.delete(_manifest.manifest_rel(v))
    if dropped:
        loc.sync_dir(MANIFEST_DIR)
    now = time.time()
    candidates = []
    for sub in (SEGMENT_DIR, TOMBSTONE_DIR, CALIBRATION_DIR):
        candidates += [f"{sub}/{n}" for n in loc.listdir(sub)]
    candidates += [n for n in loc.listdir() if n.startswith("codebooks")]
    candidates += [f"{MANIFEST_DIR}/{n}" for n in loc.listdir(MANIFEST_DIR)
                   if n.startswith(".tmp-")]
    for rel in candidates:
        if rel in keep_files:
            continue
        try:
            size, mtime = loc.stat(rel)
        except FileNotFoundError:
            continue
        # a file no manifest names may belong to a commit still in flight
        if rel not in known and now - mtime < grace_seconds:
            continue
        try:
            loc.delete(rel)
        except FileNotFoundError:
            continue
        removed_files.append(rel)
        freed += size
    return {"removed_versions": dropped, "removed_files": sorted(removed_files),
            "bytes_freed": freed}


def verify(view):
    """See :meth:`IndexStore.verify`."""
    problems = []
    loc, m = view.location, view._m
    files = m["files"]
    report = {"version": view.version, "files": 0, "bytes": 0, "segments": 0,
              "rows": 0, "ntotal": 0, "duplicate_live_ids": 0}

    def whole(entry, what):
        path = loc.path(entry["path"])
        try:
            size, crc = file_crc32(loc, entry["path"])
        except FileNotFoundError:
            problems.append(f"{path}: {what} named by the manifest is missing")
            return False
        report["files"] += 1
        report["bytes"] += size
        if size != entry["size"]:
            problems.append(f"{path}: {what} has {size} bytes, manifest says "
                            f"{entry['size']}")
            return False
        if crc != entry["crc32"]:
            problems.append(f"{path}: {what} checksum mismatch (crc32 {crc:08x}, "
                            f"manifest {entry['crc32']:08x})")
            return False
        return True

    cb = files.get("codebooks")
    if cb is not None and whole(cb, "codebooks file"):
        try:
            view._arrays = None
            _check_arrays(view._codebook_arrays(), m, loc.path(cb["path"]))
        except CorruptIndexError as exc:
            problems.append(str(exc))
    cal = files.get("calibration")
    if cal is not None and whole(cal, "calibration file"):
        try:
            arrays, _ = view.read_calibration()
            if arrays["ids"].size != cal.get("rows", arrays["ids"].size):
                problems.append(f"{loc.path(cal['path'])}: holds {arrays['ids'].size} "
                                f"queries; the manifest says {cal['rows']}")
        except CorruptIndexError as exc:
            problems.append(str(exc))
    for t in files["tombstones"]:
        if whole(t, "tombstone file"):
            try:
                view._tomb_ids.pop(t["path"], None)
                view._tombstone_ids(t)
            except CorruptIndexError as exc:
                problems.append(str(exc))
    live_ids = []
    tomb_ok = not problems
    for s in files["segments"]:
        if not whole(s, "segment"):
            continue
        report["segments"] += 1
        view._segment_files.pop(s["path"], None)
        f = SegmentFile(loc, s, m["columns"], check_chunks=True,
                        attr_schema=view.attribute_schema)
        try:
            live = _check_segment(f, s, view.nlist, view._dead_for(s["seq"]) if tomb_ok else None)
        except CorruptIndexError as exc:
            problems.append(str(exc))
            continue
        report["rows"] += s["rows"]
        if live is not None:
            report["ntotal"] += live.size
            live_ids.append(live)
    if not problems:
        if report["ntotal"] != view.ntotal:
            problems.append(f"{view.manifest_path}: counts {report['ntotal']} live rows but "
                            f"says ntotal={view.ntotal}")
        if live_ids:
            allids = np.sort(np.concatenate(live_ids))
            report["duplicate_live_ids"] = int((allids[1:] == allids[:-1]).sum())
    if problems:
        err = CorruptIndexError("; ".join(problems))
        err.problems = problems
        raise err
    return report


def repair(loc, *, rollback=False, supersede=None):
    """See :func:`shardann.storage.repair` (``loc``: the store's location)."""
    loc = location(loc)
    if bool(rollback) == (supersede is not None):
        raise ValueError("repair needs exactly one of rollback=True or supersede=VERSION; "
                         f"got rollback={rollback!r}, supersede={supersede!r}")
    root = loc.root
    versions = _manifest.list_versions(loc)
    if not versions:
        raise FileNotFoundError(f"no shardann index at {root!r} (no {MANIFEST_DIR}/v*.json)")
    damaged, errors, readable = [], [], None
    for v in reversed(versions):
        try:
            _manifest.read(loc, v)
        except FutureFormatError:
            if not damaged:
                raise  # not damage: a newer shardann wrote it
            readable = v
            break
        except CorruptIndexError as exc:
            damaged.append(v)
            errors.append(str(exc))
            continue
        readable = v
        break
    if not damaged:
        raise ValueError(f"{root}: nothing to repair: the newest manifest "
                         f"({_manifest.manifest_name(versions[-1])}) is readable")
    report = {"path": root, "damaged": sorted(damaged), "errors": errors}
    if rollback:
        if readable is None:
            raise CorruptIndexError(
                f"{root}: no manifest is readable ({'; '.join(errors)}); there is no version "
                "to roll back to. Save an index over it (index.save(path) or "
                "IndexStore.save(path, state)) or restore the manifests from a backup")
        moved = {}
        for v in damaged:
            name = _manifest.manifest_name(v)
            dest, n = f"{DAMAGED_PREFIX}{name}", 1
            while loc.exists(f"{MANIFEST_DIR}/{dest}"):
                n += 1
                dest = f"{DAMAGED_PREFIX}{name[:-len('.json')]}.{n}.json"
            loc.rename(f"{MANIFEST_DIR}/{name}", f"{MANIFEST_DIR}/{dest}")
            moved[f"{MANIFEST_DIR}/{name}"] = f"{MANIFEST_DIR}/{dest}"
        loc.sync_dir(MANIFEST_DIR)
        return {**report, "action": "rollback", "moved": moved, "version": readable}
    version = int(supersede)
    if version in damaged:
        raise ValueError(f"{root}: version {version} is the damaged one; supersede it with "
                         "an older, readable version"
                         + (f" (the newest readable is {readable})" if readable else ""))
    if version not in versions:
        raise FileNotFoundError(f"{root}: no version {version}; versions present: {versions}")
    old = StoreView.open(loc, version)  # its manifest, codebooks and file sizes checked
    body = copy.deepcopy(old._m)
    new = versions[-1] + 1
    body.update(format_version=FORMAT_VERSION, version=new, parent_version=version,
                operation="supersede",
                created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"))
    _manifest.publish(loc, body, "Another writer published it meanwhile; open the store "
                                  "(or run shardann verify) to see where it stands.")
    return {**report, "action": "supersede", "superseded_with": version, "version": new}


def _check_arrays(arrays, m, path):
    cfg = m["config"]
    kind = m["kind"]
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    want = {}
    space = cfg.get("pca") or cfg.get("d")  # centroids and codes live in the reduced space
    if kind in ("ivfflat", "ivfpq"):
        want["centroids"] = (cfg["nlist"], space)
        if cfg.get("pca"):
            want["pca_matrix"] = (cfg["d"], cfg["pca"])
            want["pca_mean"] = (cfg["d"],)
    if kind == "ivfpq":
        M, nbits = cfg["M"], cfg["nbits"]
        want["codebooks"] = (M, 1 << nbits, space // M)
        if cfg.get("opq"):
            want["opq_rotation"] = (space, space)
        if cfg.get("keep_vectors") == "int8":
            want["vector_scale"] = (2, cfg["d"])
    if shapes != want:
        raise CorruptIndexError(f"{path}: arrays {shapes} do not match the config ({want})")
    for k, v in arrays.items():
        if not np.isfinite(v).all():
            raise CorruptIndexError(f"{path}: {k} holds NaN or infinite values")


def _check_segment(f, entry, nlist, dead):
    """Read a whole segment with chunk checks; return its live ids (None if unknown)."""
    f.check_layout()
    live = []
    prev_list, prev_id = -1, None
    lo = hi = None
    for i, g in enumerate(entry["row_groups"]):
        rows = f.read([i])
        lid, ids = rows["list_id"], rows["id"]
        if lid.size != g["rows"]:
            raise CorruptIndexError(f"{f.path}: row group {i} holds {lid.size} rows, "
                                    f"manifest says {g['rows']}")
        if lid.size == 0:
            continue
        if int(lid[0]) != g["first_list"] or int(lid[-1]) != g["last_list"]:
            raise CorruptIndexError(
                f"{f.path}: row group {i} holds lists {int(lid[0])}..{int(lid[-1])}, "
                f"manifest says {g['first_list']}..{g['last_list']}")
        keys_l = np.concatenate([[prev_list], lid.astype(np.int64)])
        dl = np.diff(keys_l)
        same = dl == 0
        ids_prev = np.concatenate([[ids[0] if prev_id is None else prev_id], ids])
        if (dl < 0).any() or (np.diff(ids_prev)[same] < 0).any() or int(lid[-1]) >= nlist:
            raise CorruptIndexError(f"{f.path}: row group {i} is not sorted by (list_id, id) "
                                    f"within 0..{nlist - 1}")
        prev_list, prev_id = int(lid[-1]), int(ids[-1])
        lo = int(ids.min()) if lo is None else min(lo, int(ids.min()))
        hi = int(ids.max()) if hi is None else max(hi, int(ids.max()))
        live.append(ids if dead is None or dead.size == 0 else ids[~hits(dead, ids)])
    allids = np.concatenate(live) if live else np.zeros(0, np.int64)
    if lo is not None and (lo != entry["min_id"] or hi != entry["max_id"]):
        raise CorruptIndexError(f"{f.path}: ids span {lo}..{hi}, manifest says "
                                f"{entry['min_id']}..{entry['max_id']}")
    deleted = entry["rows"] - allids.size
    if dead is not None and deleted != entry.get("deleted", 0):
        raise CorruptIndexError(f"{f.path}: {deleted} rows are deleted, manifest says "
                                f"{entry.get('deleted', 0)}")
    return allids if dead is not None else None
