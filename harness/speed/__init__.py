"""``bench benchmark``: throughput of a recipe's model against a bare PyTorch loop, and the harness's
overhead over it."""
