"""`python -m mlops_trainer ...` is the same as the `mlops-trainer` console script."""

from mlops_trainer.cli import main

raise SystemExit(main())
