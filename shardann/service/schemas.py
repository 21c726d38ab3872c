"""Request and response bodies of the HTTP API (pydantic models).

The request models are built per service (:func:`request_models`) so that the
OpenAPI schema states the limits this service really enforces: batch sizes,
``k``, ``refine_factor``. Floats must be finite (JSON has no NaN/inf; Python's
JSON parser accepts ``NaN``/``Infinity`` tokens, which are refused with 422);
ids are JSON integers in int64 range.
"""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

INT64_MAX = 2**63 - 1

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Vector = list[FiniteFloat]
UserId = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX - 1)]
AnyId = Annotated[int, Field(strict=True, ge=-INT64_MAX - 1, le=INT64_MAX)]
#: the longest filter expression a request may carry
MAX_FILTER_CHARS = 8192
#: the most attribute columns a search may ask for
MAX_COLUMNS = 64


def request_models(config, d):
    """``(SearchRequest, AddRequest, DeleteRequest, ReloadRequest)`` for a service
    with ``config``'s limits over an index of dimension ``d``."""
    strict = ConfigDict(extra="forbid")
    search = create_model(
        "SearchRequest", __config__=strict,
        __doc__=f"k nearest neighbours of each query vector (dimension {d}).",
        vectors=(list[Vector], Field(
            min_length=1, max_length=config.max_batch_size,
            description=f"Query vectors: a list of 1..{config.max_batch_size} lists of {d} "
                        "finite numbers. Single-vector requests arriving together are "
                        "batched into one fan-out.")),
        k=(Annotated[int, Field(strict=True, ge=1, le=config.max_k)],
           Field(10, description=f"Hits per query, 1..{config.max_k}.")),
        nprobe=(Annotated[int, Field(strict=True, ge=1)] | None, Field(
            None, description="Lists scanned per query, 1..nlist (default: the index's).")),
        probe_ratio=(Annotated[float, Field(strict=True, gt=0, le=1, allow_inf_nan=False)]
                     | None, Field(
            None, description="Adaptive probing: of the nprobe closest lists scan only "
                              "those whose closeness reaches this fraction of the closest "
                              "one's (similarity for ip/cosine, 1/distance for l2), in "
                              "(0, 1]; larger is faster and less accurate. Default: all "
                              "nprobe.")),
        probe_gap=(Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)] | None, Field(
            None, description="Adaptive probing by the running k-th distance: each query "
                              "scans its nprobe closest lists closest first and skips list "
                              "j once d(q, c_j) - d(q, c_1) > probe_gap x the squared "
                              "distance of the k-th best hit so far; > 0, smaller is faster "
                              "and less accurate. l2 and cosine indexes, not sharded ones "
                              "(400). Default: off.")),
        refine_factor=(Annotated[int, Field(strict=True, ge=0, le=config.max_refine_factor)],
                       Field(0, description="Re-rank k * refine_factor candidates exactly "
                                            "(needs an index with kept vectors); 0 = off.")),
        allow_partial=(bool, Field(False, strict=True, description=(
            "Answer even when some shards do not respond; the response then lists "
            "`missing_shards`. Without it such a search fails with 503."))),
        timeout_s=(Annotated[float, Field(strict=False, gt=0, allow_inf_nan=False)] | None,
                   Field(None, description="Deadline in seconds (at most the server's "
                                           f"{config.request_timeout_s:g} s); 504 after it.")),
        filter=(Annotated[str, Field(max_length=MAX_FILTER_CHARS)] | None, Field(
            None, description="Only hits whose attributes pass this SQL-like condition, e.g. "
                              "\"lang = 'en' AND year >= 2023 AND tags CONTAINS 'news'\"; "
                              "applied inside the scan, so k passing hits come back whenever "
                              "the probed lists hold them. A bad filter (syntax, unknown "
                              "column, type mismatch) answers 400 naming the column or "
                              "position.")),
        columns=(list[Annotated[str, Field(min_length=1)]] | None, Field(
            None, max_length=MAX_COLUMNS, description=(
                "Attribute columns to return with each hit (`attributes` in the answer); "
                "an unknown column answers 400."))),
    )
    add = create_model(
        "AddRequest", __config__=strict,
        __doc__=f"Vectors to add (dimension {d}), committed before the answer.",
        vectors=(list[Vector], Field(
            min_length=1, max_length=config.max_add_batch,
            description=f"1..{config.max_add_batch} lists of {d} finite numbers.")),
        ids=(list[UserId] | None, Field(
            None, description="One int64 id (>= 0, unique, not yet in the index) per vector; "
                              "default: consecutive ids after the largest one.")),
        attributes=(list[dict[str, Any] | None] | None, Field(
            None, description="One object (or null) per vector: attribute column -> value "
                              "(number, string, bool, ISO 8601 timestamp string, list of "
                              "strings, or null). The first add with attributes fixes the "
                              "columns and their types; later adds may not name other "
                              "columns (a column missing from an object is null).")),
    )
    delete = create_model(
        "DeleteRequest", __config__=strict,
        __doc__="Ids to delete (unknown ids are ignored).",
        ids=(list[AnyId], Field(min_length=1, max_length=config.max_add_batch,
                                description=f"1..{config.max_add_batch} int64 ids.")),
    )
    reload = create_model(
        "ReloadRequest", __config__=strict,
        __doc__="Switch to another committed version of the index.",
        version=(Annotated[int, Field(strict=True, ge=1)] | None, Field(
            None, description="Version to serve (default: the newest). An older version is "
                              "served read-only.")),
    )
    return search, add, delete, reload


class SearchResponse(BaseModel):
    ids: list[list[int]] = Field(description="int64 ids, (nq, k), best first; -1 pads rows "
                                             "with fewer than k hits.")
    distances: list[list[float | None]] = Field(
        description="(nq, k): squared L2 distance (metric l2, smaller is better) or "
                    "similarity (ip, cosine; larger is better); null where the id is -1.")
    metric: str
    version: int = Field(description="Index version that answered.")
    partial: bool = Field(description="True when some shards did not answer "
                                      "(only with allow_partial).")
    missing_shards: list[int]
    attributes: list[list[dict[str, Any] | None]] | None = Field(
        None, description="With `columns`: (nq, k) objects holding the asked columns of each "
                          "hit (timestamps as ISO 8601 strings); null where the id is -1.")
    arrow_schema: str | None = Field(
        None, description="With `columns`: the columns' Arrow schema, IPC-serialized and "
                          "base64-encoded (the Python client uses it to rebuild the types).")


class AddResponse(BaseModel):
    ids: list[int] = Field(description="The ids of the added vectors.")
    ntotal: int


class DeleteResponse(BaseModel):
    removed: int = Field(description="How many of the ids were in the index.")
    ntotal: int


class ShardHealth(BaseModel):
    shard: int
    replicas: int
    alive: int


class HealthResponse(BaseModel):
    status: str = Field(description="ok (every replica answered), degraded (every shard has "
                                    "a live replica) or unavailable (some shard has none; "
                                    "HTTP 503).")
    version: int
    shards: list[ShardHealth]


class ReloadResponse(BaseModel):
    changed: bool
    previous_version: int
    version: int
    ntotal: int
    read_only: bool


class ErrorBody(BaseModel):
    code: str = Field(description="malformed_json, invalid_request, invalid_filter, "
                                  "invalid_columns, unauthorized, "
                                  "body_too_large, unsupported_media_type, not_found, "
                                  "method_not_allowed, conflict, read_only, "
                                  "shard_unavailable, timeout, internal.")
    message: str
    details: list | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
