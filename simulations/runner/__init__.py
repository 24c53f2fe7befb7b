"""`fedadapt simulate`: preflight, Flower's simulation runtime on a local SuperLink, the run lock, the process
reaper and the reports (summary, plots) of a run. `deployment/` reuses its process tools for real SuperNodes."""
