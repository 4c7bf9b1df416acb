"""The Open Inference Protocol (KServe v2 / Triton): datatypes, documents, and the REST and gRPC codecs."""
