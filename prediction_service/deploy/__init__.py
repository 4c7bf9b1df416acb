"""Running the service on existing distributed engines (Ray Serve). Nothing here is imported by ``serve``:
the embedded default never loads Ray."""
