"""The federated task shared by client/ and server/: model construction, adapter state, round hyper-parameters,
per-process caches and a client's data. Like `task.py` in Flower's examples, nothing here imports Flower, so
`client/` and `server/` stay two thin Flower shells side by side over it.
"""
