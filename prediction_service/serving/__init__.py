"""The one request path every door shares: the pipeline (authorize -> context -> admit -> decode -> infer
-> encode, observed as the client saw it), the deadline rule, and the servables the data plane dispatches to."""
