"""Serving recommendations from a trained arch=seq run (`fedadapt serve`): `run` loads the run and its catalog,
`banks` holds one round's banks and an LRU of segment banks bounded in bytes, `recommend` ranks the catalog for a
request, `app` is the FastAPI service. Not here yet (issue 19): the edge/cloud split, int8, an ANN index, the page
and the load benchmark."""
