"""Serving recommendations from a trained arch=seq run (`fedadapt serve`): `run` loads the run and its catalog,
`banks` holds one round's banks and an LRU of segment banks bounded in bytes, `retrieval` the round's item side
(fp32 or int8 item vectors, an optional HNSW index), `recommend` ranks the catalog for requests and mixed batches,
`limits` caps request bodies before they are read, `app` is the FastAPI service, `page` its `GET /` page, `edge`
the edge half of the edge/cloud split and `export` the file the edge needs (`--export-edge`) and its tower."""
