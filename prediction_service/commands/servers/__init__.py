"""Local Triton and TorchServe processes that the development commands and the tests start (not adapters:
the adapters talk to whatever server their settings name)."""
