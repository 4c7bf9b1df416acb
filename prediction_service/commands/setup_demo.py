"""``setup-demo``: train the model zoo's three demo models briefly and register them in production, with the
price + sentiment ensemble over lstm-price and sentiment-transformer."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("setup-demo", help="build the demo registry (lstm-price, cnn-lstm-direction, "
                                                      "sentiment-transformer and the price-sentiment ensemble) "
                                                      "with production links")
    parser.add_argument("--store", type=Path, default=None, help="registry root (default: MODEL_STORE)")
    parser.add_argument("--force", action="store_true", help="rebuild models that are already present")
    parser.add_argument("--minilm", action="store_true",
                        help="also build sentiment-minilm: a head on the pretrained all-MiniLM-L6-v2 encoder, BERT "
                             "WordPiece tokenization on the server (needs requirements-dev.txt; ~20-60 s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .demo_registry import build_demo_registry  # torch/onnx imports only when the command runs

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    store = args.store or Settings().model_store
    registered = build_demo_registry(Path(store), force=args.force)
    if args.minilm:
        from ..modelzoo.minilm_sentiment import EncoderUnavailable
        from .demo_registry import MINILM_NAME, build_minilm_sentiment

        try:
            minilm = build_minilm_sentiment(Path(store), force=args.force)
        except EncoderUnavailable as exc:
            print(f"setup-demo --minilm: {exc}")
            return 2
        if minilm is not None:
            registered[MINILM_NAME] = minilm
    print(f"demo registry at {Path(store).resolve()}: "
          + (", ".join(f"{name} v{v.version}" for name, v in registered.items()) or "nothing new (use --force)"))
    return 0
