"""The Open Inference Protocol gRPC front door (``inference.GRPCInferenceService``), as Triton serves it,
so unchanged ``tritonclient.grpc`` code works against this service. ``GrpcServer`` is in server.py."""
