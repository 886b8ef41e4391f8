"""The reconcile engine: watch cache, keyed work queue, and the total reconcile loop."""
