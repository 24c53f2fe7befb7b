"""The ASGI app of `fedadapt serve`: request and reply shapes, limits, and the mapping of mistakes to 4xx.

Every request body is a pydantic model with `extra="forbid"`, strict types and length limits, so a misspelt
field, a string where a number belongs, a huge k or a 100,000-event history is answered 422 with the field named,
before any tensor is touched. Before that, a body over MAX_BODY_BYTES is answered 413 without being read whole
(serving/limits.py). A validation error never echoes the input back (a long history would come back
whole). The recommender's own refusals (an item outside the catalog, a segment key the run has no banks for,
a vector of the wrong width) are 422 with its message too.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from common.names import SEQ
from serving.limits import BodyLimit
from serving.page import PAGE_HTML
from serving.recommend import Query, Recommendation, Recommender, RequestError

MAX_K = 1000  # items per reply
MAX_HISTORY = 10_000  # events per request; the user tower reads only the most recent seq-max-len of them
MAX_SEGMENTS = 16
MAX_VECTOR = 4096
MAX_BATCH = 64  # requests per POST /recommend/batch
MAX_NAME = 256  # characters of an item id, a segment key or value
# Bytes of a request body, enforced before the body is read (serving/limits.py): above the largest valid single
# request (10,000 history ids of 256 characters, quoted and comma-separated, is 2,580,000 bytes), far below what a
# server should buffer per request. A batch must fit in it too (its requests' field limits alone would allow more).
MAX_BODY_BYTES = 3 << 20

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Segments = Annotated[dict[Name, Name], Field(max_length=MAX_SEGMENTS)]


class RecommendRequest(BaseModel):
    """A user's segment values and recent history (oldest first, item ids of the run's catalog)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    segments: Segments = Field(default_factory=dict)
    history: Annotated[list[Name], Field(max_length=MAX_HISTORY)] = Field(default_factory=list)
    # each history event's type (view, click, add_to_cart, purchase, rating1..rating5); absent: all purchases
    history_types: Annotated[list[Name], Field(max_length=MAX_HISTORY)] | None = None
    k: int = Field(10, ge=1, le=MAX_K)
    exclude_history: bool = True
    include_vector: bool = False
    show_history: bool = False  # the reply lists the history the tower read (the last seq-max-len events), titled


class BatchRequest(BaseModel):
    """Several users' requests, answered together (any mix of segments)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    requests: Annotated[list[RecommendRequest], Field(min_length=1, max_length=MAX_BATCH)]


class VectorRequest(BaseModel):
    """A user vector computed elsewhere and, optionally, the segments whose item-bias deltas apply."""

    model_config = ConfigDict(extra="forbid", strict=True)
    vector: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=1, max_length=MAX_VECTOR)]
    segments: Segments = Field(default_factory=dict)
    k: int = Field(10, ge=1, le=MAX_K)


def reply(rec: Recommendation) -> dict[str, Any]:
    out: dict[str, Any] = {"round": rec.round, "banks": rec.banks, "fallbacks": rec.fallbacks,
                           "items": [{"id": r.id, "title": r.title, "score": r.score} for r in rec.items]}
    if rec.user_vector is not None:
        out["user_vector"] = rec.user_vector
    return out


def create_app(recommender: Recommender, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The service over `recommender` (its store picks up new rounds; see serving/banks.py); request bodies over
    `max_body_bytes` are answered 413 before they are read."""
    app = FastAPI(title="fedadapt serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    store = recommender.store

    def shown(request: RecommendRequest, out: dict[str, Any]) -> dict[str, Any]:
        """`out` with the history the tower read (titled) when the request asked for it."""
        if request.show_history:
            read = request.history[-store.current().model.cfg.max_len:]
            out["history"] = [{"id": i, "title": recommender.titles.get(i, "")} for i in read]
        return out

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()[:10]]
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse(status_code=422, content={"detail": detail, "errors": errors})

    @app.exception_handler(RequestError)
    async def refused(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(OSError)
    async def gone(_: Request, exc: OSError) -> JSONResponse:  # a pruned round's bank file vanished mid-request
        return JSONResponse(status_code=503, content={"detail": f"checkpoint not readable ({exc}); retry"})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "round": store.current().round}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        bank_set = store.current()
        run = store.run
        return {"run": str(run.folder), "arch": SEQ, "round": bank_set.round,
                "segment_keys": list(recommender.segment_keys), "banks": sorted(bank_set.files),
                "served": sorted(bank_set.served),
                "catalog": {"items": len(run.catalog), "fingerprint": run.fingerprint},
                "user_vector_dim": int(bank_set.table.shape[1]), "history_window": bank_set.model.cfg.max_len,
                "retrieval": bank_set.retrieval.kind, "item_vector_bytes": bank_set.retrieval.items.nbytes,
                "limits": {"k": MAX_K, "history": MAX_HISTORY, "segments": MAX_SEGMENTS, "batch": MAX_BATCH,
                           "body_bytes": max_body_bytes},
                "cache": {"bytes": store.cache.bytes, "max_bytes": store.cache.max_bytes,
                          "banks": len(store.cache), "evictions": store.cache.evictions}}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE_HTML

    @app.post("/recommend")
    def recommend(body: RecommendRequest) -> dict[str, Any]:
        return shown(body, reply(recommender.recommend(body.segments, body.history, body.k, body.exclude_history,
                                                       body.include_vector, body.history_types)))

    @app.post("/recommend/batch")
    def recommend_batch(body: BatchRequest) -> dict[str, Any]:
        queries = [Query(r.segments, r.history, r.k, r.exclude_history, r.include_vector, r.history_types)
                   for r in body.requests]
        return {"replies": [shown(r, reply(rec))
                            for r, rec in zip(body.requests, recommender.recommend_batch(queries), strict=True)]}

    @app.post("/recommend/vector")
    def recommend_vector(body: VectorRequest) -> dict[str, Any]:
        return reply(recommender.recommend_vector(body.vector, body.segments, body.k))

    return app
