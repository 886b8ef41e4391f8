"""mlops_trainer: the training, compile and evaluation workloads that mlops-operator launches.

The package root and the data modules import no torch, so the operator's test environment can use
the demo-data helper (`mlops_trainer.demo_data`) and the data-contract check without it.
"""

__version__ = "0.1.0"
