"""The /v1 JSON protocol: request and response schemas, the headers shared with the client, the codec."""
