"""`fedadapt bench`: measurements that are reported, not asserted, one module per benchmark; `cli/bench.py` holds
the one registry (`Benchmark` records) that names them. Figures are ratios against a baseline run in the same
process wherever the benchmark compares speed."""
