"""Pure readings of what workloads did: observed children in, one verdict out."""
