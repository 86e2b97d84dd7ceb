"""Measurement: FLOPs/params, throughput/latency/memory, resolution sweeps."""
