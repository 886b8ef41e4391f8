"""The operator's API. `v1alpha1` holds the models; `validation` checks whole manifests against them."""
