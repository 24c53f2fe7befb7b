"""Serving recommendations from a trained run (issue "Serving"): the home of the edge user tower, the cloud item
index and the `fedadapt serve` service. Nothing is built here yet; `fedadapt serve` does not exist today."""
