"""mlops_contract: what mlops-operator and its workloads (trainer, compiler, evaluator) agree on.

One home for it, imported by both sides, standard library only:

- `exitcodes`: the workloads' exit codes and which of them are retryable;
- `result`: the result summary in the termination message (schema, 4 KiB limit, fields, encode/parse);
- `dataset`: the data-set fingerprint formula, what a listing counts as data, the manifests and where
  the operator records one;
- `modelrepository`: the Triton model repository manifest (repository.json) the operator publishes and
  a serving pod's init container fetches;
- `envvars`: the names of the environment variables the operator sets and the workload reads.
"""

__version__ = "0.1.0"
